//! Kafka through librdkafka (rdkafka, bundled build): one confirmed produce for `notify`, and a
//! bounded read of one day's messages for `extract --from-kafka`.
//!
//! Failures map to exit codes a scheduler can act on: a broker that cannot be reached, or that
//! refuses the message for good (unknown topic, authorisation, message too large), is
//! [`Error::Unavailable`] (69); a broker that is reachable but does not confirm in time is
//! [`Error::Temporary`] (75).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::error::{Error, Result};

/// What the client saw while it worked: the last broker-level error, whether every broker was
/// down at that moment, and the delivery report.
#[derive(Default)]
struct Seen {
    all_brokers_down: bool,
    transport_failed: bool,
    last_error: Option<String>,
    /// The last connection failure (refused, name not resolved): more telling than the "1/1
    /// brokers are down" that follows it.
    transport_error: Option<String>,
    delivery: Option<std::result::Result<(i32, i64), KafkaError>>,
}

/// librdkafka callbacks: errors instead of its own log lines, delivery reports kept.
#[derive(Default)]
pub struct Context {
    seen: Mutex<Seen>,
}

impl Context {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reason to give when the broker never answered.
    fn unreachable_reason(&self) -> Option<String> {
        let s = self.seen();
        s.all_brokers_down.then(|| {
            s.transport_error
                .clone()
                .or_else(|| s.last_error.clone())
                .unwrap_or_else(|| "all brokers down".into())
        })
    }
}

impl Context {
    /// Forgets that every broker was down, keeping the errors that said so: whether it is
    /// reported again tells a cluster that stays down from one that came up meanwhile.
    fn forget_outage(&self) {
        self.seen().all_brokers_down = false;
    }

    /// The broker answered: an earlier outage is over.
    fn answered(&self) {
        let mut s = self.seen();
        s.all_brokers_down = false;
        s.transport_failed = false;
        s.transport_error = None;
    }
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        tracing::debug!("librdkafka {level:?} {fac}: {msg}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!("librdkafka error: {error}: {reason}");
        let mut s = self.seen();
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => s.all_brokers_down = true,
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                s.transport_failed = true;
                s.transport_error = Some(reason.trim().to_string());
            }
            _ => {}
        }
        s.last_error = Some(reason.trim().to_string());
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut s = self.seen();
        s.delivery = Some(match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        });
    }
}

impl rdkafka::consumer::ConsumerContext for Context {}

/// The librdkafka configuration shared by the producer and the consumer (the caller adds its own
/// settings, then the user's pass-through properties, which win).
fn client_config(k: &KafkaSettings) -> Result<ClientConfig> {
    let brokers = k.brokers.as_deref().ok_or_else(|| {
        Error::Config(
            "no Kafka brokers: give --brokers, CHATETL_KAFKA_BROKERS or kafka.brokers in the config file"
                .into(),
        )
    })?;
    let ms = (k.timeout_s * 1000.0).round().max(1.0) as u64;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", &k.client_id)
        // Longer than our own deadline, so that librdkafka does not tear down the connection to
        // a slow broker while we still wait: a refused connection or a failed name look-up is
        // "unreachable" (69), no answer within our deadline is "timed out" (75).
        .set("socket.timeout.ms", (ms + 5000).min(300_000).to_string())
        .set(
            "socket.connection.setup.timeout.ms",
            (ms + 5000).min(2_147_483_647).to_string(),
        )
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "7");
    Ok(c)
}

fn config_error(e: KafkaError) -> Error {
    Error::Config(format!("Kafka client configuration: {e}"))
}

/// Where a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Produces one message and waits for the broker to confirm it (acks=all).
pub fn produce_one(k: &KafkaSettings, topic: &str, payload: &[u8]) -> Result<Delivered> {
    let timeout = Duration::from_secs_f64(k.timeout_s);
    let ms = timeout.as_millis().max(1) as u64;
    let mut c = client_config(k)?;
    c.set("acks", "all")
        .set("message.timeout.ms", ms.min(2_147_483_647).to_string())
        .set("request.timeout.ms", ms.clamp(100, 900_000).to_string())
        .set("retry.backoff.ms", "100")
        .set("linger.ms", "0");
    for (key, v) in &k.properties {
        c.set(key, v);
    }
    let producer: BaseProducer<Context> = c
        .create_with_context(Context::default())
        .map_err(config_error)?;
    let deadline = Instant::now() + timeout + Duration::from_millis(500);
    // Ask about the topic first: a missing topic is a refusal (69), not something to wait for.
    let meta = topic_metadata(
        producer.client(),
        || producer.poll(Duration::from_millis(20)),
        topic,
        timeout,
    )?;
    if let Some(err) = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.error())
    {
        match RDKafkaErrorCode::from(err) {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                return Err(Error::Unavailable(format!(
                    "Kafka topic {topic} does not exist (create it, or let the broker auto-create topics)"
                )));
            }
            RDKafkaErrorCode::TopicAuthorizationFailed => {
                return Err(Error::Unavailable(format!(
                    "Kafka refused access to topic {topic}: not authorized"
                )));
            }
            // Being created, or a leader moving: the produce below waits for it.
            _ => {}
        }
    }
    let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic).payload(payload);
    if let Err((e, _)) = producer.send(record) {
        return Err(Error::Unavailable(format!(
            "Kafka refused the message for topic {topic}: {e}"
        )));
    }
    loop {
        producer.poll(Duration::from_millis(50));
        let delivered = producer.context().seen().delivery.take();
        if let Some(result) = delivered {
            return match result {
                Ok((partition, offset)) => Ok(Delivered { partition, offset }),
                Err(e) => Err(delivery_error(producer.context(), topic, &e)),
            };
        }
        if Instant::now() >= deadline {
            // Purge so that dropping the producer does not block on the queued message.
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            producer.poll(Duration::from_millis(10));
            return Err(timeout_error(producer.context(), topic, timeout));
        }
    }
}

fn timeout_error(ctx: &Context, topic: &str, timeout: Duration) -> Error {
    match ctx.unreachable_reason() {
        Some(reason) => Error::Unavailable(format!(
            "Kafka broker unreachable after {:.1} s: {reason}",
            timeout.as_secs_f64()
        )),
        None => Error::Temporary(format!(
            "Kafka did not confirm delivery to topic {topic} within {:.1} s",
            timeout.as_secs_f64()
        )),
    }
}

fn delivery_error(ctx: &Context, topic: &str, e: &KafkaError) -> Error {
    let code = e.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::MessageTimedOut) {
        return match ctx.unreachable_reason() {
            Some(r) => Error::Unavailable(format!("Kafka broker unreachable: {r}")),
            None => Error::Temporary(format!(
                "Kafka did not confirm delivery to topic {topic} in time: {e}"
            )),
        };
    }
    if code.is_some_and(is_retriable) {
        return Error::Temporary(format!("Kafka delivery to topic {topic} failed: {e}"));
    }
    Error::Unavailable(format!("Kafka refused delivery to topic {topic}: {e}"))
}

/// A connection could not be made or was lost (refused, unknown host, every broker down).
fn is_connection_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
    )
}

/// The message's timestamp in epoch milliseconds (create or append time), if it has one.
fn timestamp_ms<M: Message>(m: &M) -> Option<i64> {
    match m.timestamp() {
        Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
        Timestamp::NotAvailable => None,
    }
}

/// Errors worth retrying later (the broker may recover), as opposed to a refusal.
fn is_retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageTimedOut
            | RequestTimedOut
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | LeaderNotAvailable
            | NotLeaderForPartition
            | NetworkException
            | NotCoordinator
            | CoordinatorNotAvailable
            | CoordinatorLoadInProgress
            | KafkaStorageError
            | OperationTimedOut
            | TimedOutQueue
            | Retry
            | ThrottlingQuotaExceeded
    )
}

/// The half-open window `[start, end)` of a calendar day in `tz`, in epoch milliseconds.
///
/// A day starts at its first instant: when local midnight does not exist (a DST gap at
/// midnight) the day starts at the end of the gap; when it is ambiguous, at the earlier one.
pub fn day_window_ms(date: NaiveDate, tz: Tz) -> (i64, i64) {
    (
        day_start_ms(date, tz),
        day_start_ms(date.succ_opt().unwrap_or(date), tz),
    )
}

fn day_start_ms(date: NaiveDate, tz: Tz) -> i64 {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight");
    // Gaps are at most a few hours; step forward a minute at a time until local time exists.
    for _ in 0..(24 * 60) {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.timestamp_millis();
        }
        t += chrono::Duration::minutes(1);
    }
    tz.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
        .timestamp_millis()
}

/// The offsets of one partition to read: `[start, stop)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// Offset to stop before.
    pub stop: i64,
    /// Whether the time look-up gave these offsets (false: scan from the low watermark).
    pub from_lookup: bool,
}

/// Turns watermarks and the time look-up's answers into the offsets to read.
///
/// `start_lookup`/`end_lookup` are the first offsets whose timestamp is at or after the window's
/// start and end: `Some(Offset::End)` means no such message, `None` means the look-up failed.
/// An answer outside `[low, high]`, or a failed look-up, gives no usable offset: then the whole
/// partition is scanned and messages are kept by timestamp alone.
pub fn partition_range(
    partition: i32,
    low: i64,
    high: i64,
    start_lookup: Option<Offset>,
    end_lookup: Option<Offset>,
) -> PartitionRange {
    let usable = |o: Option<Offset>| match o {
        Some(Offset::Offset(x)) if (low..=high).contains(&x) => Some(x),
        Some(Offset::End) => Some(high),
        _ => None,
    };
    match (usable(start_lookup), usable(end_lookup)) {
        (Some(s), Some(e)) if s <= e => PartitionRange {
            partition,
            start: s,
            stop: e,
            from_lookup: true,
        },
        _ => PartitionRange {
            partition,
            start: low,
            stop: high,
            from_lookup: false,
        },
    }
}

/// One message of the day.
#[derive(Debug, Clone)]
pub struct DayMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The message value (None for a tombstone).
    pub payload: Option<Vec<u8>>,
}

/// What reading a topic for a day found.
#[derive(Debug, Default)]
pub struct DayRead {
    /// Partitions of the topic, in order, with the offsets read.
    pub ranges: Vec<PartitionRange>,
    /// Messages in the window (each handed to the caller as it was read).
    pub in_window: u64,
    /// Messages read but outside the window (or without a timestamp).
    pub outside_window: u64,
}

/// Receives each message of the day, partition by partition, in offset order.
pub type OnMessage<'a> = dyn FnMut(DayMessage) -> Result<()> + 'a;

/// Reads every message of `topic` whose timestamp falls in `[start_ms, end_ms)`.
///
/// Offsets come from the broker's time look-up when `k.time_lookup` (falling back to a full scan
/// per partition when it gives no usable answer, or answers that the messages around them
/// contradict); see [`read_range`] for where a partition's read ends.
pub fn read_day(
    k: &KafkaSettings,
    topic: &str,
    start_ms: i64,
    end_ms: i64,
    on_message: &mut OnMessage<'_>,
) -> Result<DayRead> {
    let timeout = Duration::from_secs_f64(k.timeout_s);
    // Messages stamped after the read began were produced meanwhile: they end the read of a
    // partition once its end offset is passed, even on a busy topic during the day itself.
    let read_started_ms = chrono::Utc::now().timestamp_millis();
    let mut c = client_config(k)?;
    c.set("group.id", format!("{}-extract", k.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (key, v) in &k.properties {
        c.set(key, v);
    }
    // The read's end is detected by the partition-end event: not the user's to turn off.
    c.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<Context> = c
        .create_with_context(Context::default())
        .map_err(config_error)?;
    let meta = topic_metadata(
        consumer.client(),
        || {
            let _ = consumer.poll(Duration::from_millis(20));
        },
        topic,
        timeout,
    )?;
    let t = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::NoInput(format!("Kafka topic {topic} does not exist")))?;
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                Error::NoInput(format!("Kafka topic {topic} does not exist"))
            }
            c if is_retriable(c) => Error::Temporary(format!("Kafka topic {topic}: {c}")),
            c => Error::Unavailable(format!("Kafka topic {topic}: {c}")),
        });
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(Error::NoInput(format!(
            "Kafka topic {topic} has no partitions"
        )));
    }

    let lookup = |ts: i64| -> Option<TopicPartitionList> {
        if !k.time_lookup {
            return None;
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ts))
                .ok()?;
        }
        match consumer.offsets_for_times(tpl, timeout) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::info!("Kafka time look-up for {topic} failed ({e}); scanning instead.");
                None
            }
        }
    };
    let starts = lookup(start_ms);
    let ends = lookup(end_ms);
    let answer = |tpl: &Option<TopicPartitionList>, p: i32| {
        let e = tpl.as_ref()?.find_partition(topic, p)?;
        e.error().ok()?;
        Some(e.offset())
    };
    let mut out = DayRead::default();
    for &p in &partitions {
        let asked = Instant::now();
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| metadata_error(consumer.context(), topic, &e, timeout, asked))?;
        let mut range = partition_range(p, low, high, answer(&starts, p), answer(&ends, p));
        if !range.from_lookup && k.time_lookup {
            tracing::info!(
                "{topic}/{p}: no usable offsets from the time look-up; scanning {low}..{high}."
            );
        }
        // Check the answers against the messages around them: the message before the start must
        // be older than the window, the one at the end not older than its end. A broker that
        // looks up by append time instead of the message's timestamp fails this check.
        if range.from_lookup {
            let start_ok = range.start <= low
                || ts_at(&consumer, topic, p, range.start - 1, timeout)?
                    .is_some_and(|t| t < start_ms);
            let end_ok = range.stop >= high
                || ts_at(&consumer, topic, p, range.stop, timeout)?.is_some_and(|t| t >= end_ms);
            if !(start_ok && end_ok) {
                tracing::info!(
                    "{topic}/{p}: the time look-up's offsets {}..{} do not match the messages' timestamps; scanning {low}..{high}.",
                    range.start,
                    range.stop
                );
                range = PartitionRange {
                    partition: p,
                    start: low,
                    stop: high,
                    from_lookup: false,
                };
            }
        }
        tracing::debug!("{topic}/{p}: watermarks {low}..{high}, reading {range:?}");
        out.ranges.push(range);
    }
    for range in out.ranges.clone() {
        let window = (start_ms, end_ms, end_ms.min(read_started_ms));
        read_range(
            &consumer, topic, range, window, timeout, &mut out, on_message,
        )?;
    }
    Ok(out)
}

/// The timestamp of the message at `offset` (None when it has none or cannot be read).
fn ts_at(
    consumer: &BaseConsumer<Context>,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| Error::Internal(e.to_string()))?;
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Unavailable(format!("cannot read Kafka topic {topic}: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut found = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.partition() == partition && m.offset() >= offset => {
                if m.offset() == offset {
                    found = timestamp_ms(&m);
                }
                break;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    consumer
        .unassign()
        .map_err(|e| Error::Unavailable(format!("cannot read Kafka topic {topic}: {e}")))?;
    Ok(found)
}

/// Reads one partition's range. `window` is the day's `[start, end)` and the time past which a
/// message beyond the end offset ends the read (the day's end, or the read's start when that is
/// earlier).
fn read_range(
    consumer: &BaseConsumer<Context>,
    topic: &str,
    range: PartitionRange,
    window: (i64, i64, i64),
    timeout: Duration,
    out: &mut DayRead,
    on_message: &mut OnMessage<'_>,
) -> Result<()> {
    let (start_ms, end_ms, stop_ms) = window;
    if range.start >= range.stop {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, range.partition, Offset::Offset(range.start))
        .map_err(|e| Error::Internal(e.to_string()))?;
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Unavailable(format!("cannot read Kafka topic {topic}: {e}")))?;
    let mut last_progress = Instant::now();
    let mut next = range.start;
    // The read ends at the end of the partition, or at the first message at or past the end
    // offset known at the start whose timestamp is past the window (or past the read's start). Messages past that offset
    // but still on the day (produced meanwhile, or hidden by a broker that counts its high
    // watermark in batches instead of records, as Tansu 0.6 does) are the day's too; the day's
    // end bounds the read even on a busy topic.
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if last_progress.elapsed() > timeout {
                    return Err(match consumer.context().unreachable_reason() {
                        Some(r) => Error::Unavailable(format!("Kafka broker unreachable: {r}")),
                        None => Error::Temporary(format!(
                            "{topic}/{}: no message for {:.1} s at offset {next} (stop at {})",
                            range.partition,
                            timeout.as_secs_f64(),
                            range.stop
                        )),
                    });
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                // Connection trouble (a broker restarting, a leader moving) is retried by
                // librdkafka: wait for it up to the no-progress timeout.
                let code = e.rdkafka_error_code();
                let transient = code.is_some_and(|c| is_retriable(c) || is_connection_error(c));
                if !transient {
                    return Err(Error::Unavailable(format!(
                        "cannot read Kafka topic {topic}/{}: {e}",
                        range.partition
                    )));
                }
                if last_progress.elapsed() > timeout {
                    return Err(Error::Unavailable(format!(
                        "cannot read Kafka topic {topic}/{} for {:.1} s: {e}",
                        range.partition,
                        timeout.as_secs_f64()
                    )));
                }
            }
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.partition() != range.partition || m.offset() < next {
                    continue;
                }
                next = m.offset() + 1;
                let ts = timestamp_ms(&m);
                if m.offset() >= range.stop && ts.is_none_or(|t| t >= stop_ms) {
                    break;
                }
                if ts.is_some_and(|t| t >= start_ms && t < end_ms) {
                    out.in_window += 1;
                    on_message(DayMessage {
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload().map(|p| p.to_vec()),
                    })?;
                } else {
                    out.outside_window += 1;
                }
            }
        }
    }
    consumer
        .unassign()
        .map_err(|e| Error::Unavailable(format!("cannot read Kafka topic {topic}: {e}")))?;
    Ok(())
}

/// Runs a blocking request on a helper thread while this one polls the client, so that
/// librdkafka's error events (connection refused, all brokers down) reach [`Context`] meanwhile:
/// they are delivered only by polling.
fn while_polling<T: Send>(poll: impl Fn(), request: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(request);
        while !h.is_finished() {
            poll();
        }
        h.join().expect("Kafka request thread")
    })
}

/// The metadata of `topic`, asked in attempts of growing length (a quarter of a second, then
/// twice as long each time) within `timeout`, polling the client meanwhile. librdkafka keeps
/// retrying a broker that refuses connections or whose name does not resolve until a request's
/// timeout, and reports every broker down again at each failed reconnection (at most a second
/// apart): reported in two attempts in a row, the cluster is "unreachable" (69) within about a
/// second instead of after the whole `--timeout`. Once is not enough: a bootstrap name with
/// several addresses reports every broker down when the first address refuses, and then
/// connects to the next one, which may answer slowly. A broker that answers slowly only gets
/// longer attempts and is a timeout (75) at the deadline, as before.
fn topic_metadata(
    client: &rdkafka::client::Client<Context>,
    poll: impl Fn(),
    topic: &str,
    timeout: Duration,
) -> Result<rdkafka::metadata::Metadata> {
    let asked = Instant::now();
    let deadline = asked + timeout;
    let mut attempt = Duration::from_millis(250);
    let mut down_before = false;
    loop {
        let t = attempt
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let started = Instant::now();
        let e = match while_polling(&poll, || client.fetch_metadata(Some(topic), t)) {
            Ok(meta) => {
                client.context().answered();
                return Ok(meta);
            }
            Err(e) => e,
        };
        // Only a request that ran out of its own time is worth asking again: a connection that
        // failed well before it, or any other error, is classified now.
        let timed_out = match e.rdkafka_error_code() {
            Some(c) if is_connection_error(c) => started.elapsed() >= t.mul_f64(0.9),
            Some(c) => is_retriable(c),
            None => false,
        };
        let down = client.context().unreachable_reason().is_some();
        if !timed_out || (down && down_before) || Instant::now() >= deadline {
            return Err(metadata_error(client.context(), topic, &e, timeout, asked));
        }
        down_before = down;
        client.context().forget_outage();
        attempt = attempt.saturating_mul(2);
    }
}

/// Classifies a failed metadata or watermark request started at `started`. librdkafka reports
/// a request that got no answer within its timeout as a transport failure too, so a transport
/// failure counts as "unreachable" only when the client saw a connection fail or the request
/// failed well before the deadline; otherwise it is a timeout.
fn metadata_error(
    ctx: &Context,
    topic: &str,
    e: &KafkaError,
    timeout: Duration,
    started: Instant,
) -> Error {
    if let Some(r) = ctx.unreachable_reason() {
        return Error::Unavailable(format!("Kafka broker unreachable: {r}"));
    }
    let early = started.elapsed() < timeout.mul_f64(0.9);
    match e.rdkafka_error_code() {
        Some(c) if is_connection_error(c) && early => {
            Error::Unavailable(format!("Kafka broker unreachable: {e}"))
        }
        Some(c) if is_connection_error(c) => Error::Temporary(format!(
            "Kafka did not answer about topic {topic} within {:.1} s",
            timeout.as_secs_f64()
        )),
        Some(c) if is_retriable(c) => Error::Temporary(format!(
            "Kafka did not answer about topic {topic} within {:.1} s: {e}",
            timeout.as_secs_f64()
        )),
        _ => Error::Unavailable(format!("Kafka: cannot read topic {topic}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn day_window_in_utc_and_seoul() {
        let (s, e) = day_window_ms(d("2024-10-24"), chrono_tz::UTC);
        assert_eq!(s, 1_729_728_000_000);
        assert_eq!(e - s, 86_400_000);
        let (s2, e2) = day_window_ms(d("2024-10-24"), chrono_tz::Asia::Seoul);
        assert_eq!(s2, s - 9 * 3_600_000);
        assert_eq!(e2 - s2, 86_400_000);
    }

    #[test]
    fn day_window_across_dst_changes() {
        // Europe/Paris: 2024-03-31 has 23 hours, 2024-10-27 has 25.
        let (s, e) = day_window_ms(d("2024-03-31"), chrono_tz::Europe::Paris);
        assert_eq!(e - s, 23 * 3_600_000);
        let (s, e) = day_window_ms(d("2024-10-27"), chrono_tz::Europe::Paris);
        assert_eq!(e - s, 25 * 3_600_000);
        // America/Havana skips midnight (00:00 -> 01:00) on 2024-03-10: the day starts at 01:00.
        let (s, _) = day_window_ms(d("2024-03-10"), chrono_tz::America::Havana);
        let (_, prev_end) = day_window_ms(d("2024-03-09"), chrono_tz::America::Havana);
        assert_eq!(s, prev_end);
        let start = chrono::DateTime::from_timestamp_millis(s).unwrap();
        assert_eq!(start.to_rfc3339(), "2024-03-10T05:00:00+00:00");
    }

    #[test]
    fn consecutive_days_tile_the_time_line() {
        let mut day = d("2024-01-01");
        for _ in 0..366 {
            let (_, e) = day_window_ms(day, chrono_tz::America::New_York);
            let next = day.succ_opt().unwrap();
            assert_eq!(e, day_window_ms(next, chrono_tz::America::New_York).0);
            day = next;
        }
    }

    #[test]
    fn partition_ranges_from_look_ups() {
        // Normal: both look-ups answer inside the watermarks.
        let r = partition_range(
            0,
            10,
            100,
            Some(Offset::Offset(20)),
            Some(Offset::Offset(50)),
        );
        assert_eq!((r.start, r.stop, r.from_lookup), (20, 50, true));
        // No message at or after the end: read to the high watermark.
        let r = partition_range(0, 10, 100, Some(Offset::Offset(20)), Some(Offset::End));
        assert_eq!((r.start, r.stop, r.from_lookup), (20, 100, true));
        // Nothing at or after the start either: empty range at the end.
        let r = partition_range(0, 10, 100, Some(Offset::End), Some(Offset::End));
        assert_eq!((r.start, r.stop, r.from_lookup), (100, 100, true));
        // Empty partition.
        let r = partition_range(3, 0, 0, Some(Offset::End), Some(Offset::End));
        assert_eq!((r.start, r.stop), (0, 0));
        // A failed look-up, an answer outside the watermarks or reversed: scan everything.
        for (a, b) in [
            (None, Some(Offset::End)),
            (Some(Offset::Offset(5)), Some(Offset::End)),
            (Some(Offset::Offset(20)), Some(Offset::Offset(101))),
            (Some(Offset::Offset(60)), Some(Offset::Offset(50))),
            (Some(Offset::Invalid), Some(Offset::End)),
            (Some(Offset::Beginning), Some(Offset::End)),
        ] {
            let r = partition_range(1, 10, 100, a, b);
            assert_eq!(
                (r.start, r.stop, r.from_lookup),
                (10, 100, false),
                "{a:?} {b:?}"
            );
        }
    }
}
