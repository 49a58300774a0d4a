//! Validated settings from flags > environment (`CHATETL_*`) > config file > defaults.
//!
//! The stages only ever see a [`Settings`]: every value has been parsed and checked here, and
//! each remembers where it came from so `chatetl config` can say why a value is what it is.
//! A typo in `chatetl.toml` is an error (78), never silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::cli::GlobalArgs;
use crate::error::{Error, Result};

/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "chatetl.toml";

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// A `CHATETL_*` environment variable.
    Env,
    /// The config file.
    File,
    /// The built-in default.
    Default,
}

/// Field-name aliases used to map a record's keys onto the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldAliases {
    /// Keys that hold the sender ID.
    pub sender: Vec<String>,
    /// Keys that hold the message text.
    pub message: Vec<String>,
    /// Keys that hold the event time.
    pub time: Vec<String>,
    /// Keys that hold the room.
    pub room: Vec<String>,
    /// Keys that hold the Kafka offset.
    pub offset: Vec<String>,
}

impl Default for FieldAliases {
    fn default() -> Self {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        FieldAliases {
            sender: v(&[
                "user",
                "username",
                "sender",
                "nickname",
                "senderId",
                "sender_id",
                "request_senderId",
                "from",
                "author",
                "name",
            ]),
            message: v(&["message", "msg", "content", "text", "body"]),
            time: v(&[
                "time",
                "timestamp",
                "ts",
                "created_at",
                "createdAt",
                "datetime",
                "date",
                "sent_at",
            ]),
            room: v(&[
                "room",
                "chat_room",
                "chatroom",
                "chatRoom",
                "room_id",
                "topic",
                "channel",
            ]),
            offset: v(&["offset", "kafka_offset"]),
        }
    }
}

/// The config file's shape. Every key is optional; unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    input_root: Option<PathBuf>,
    output_root: Option<PathBuf>,
    tz: Option<String>,
    input_pattern: Option<String>,
    max_line_bytes: Option<usize>,
    max_reject_ratio: Option<f64>,
    memory_budget_mb: Option<u64>,
    compression: Option<Codec>,
    system_senders: Option<Vec<String>>,
    stop_words: Option<Vec<String>>,
    fields: Option<FieldAliases>,
    kafka: Option<KafkaFile>,
}

/// The `[kafka]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaFile {
    brokers: Option<String>,
    topic: Option<String>,
    client_id: Option<String>,
    timeout_s: Option<f64>,
    sender: Option<String>,
    time_lookup: Option<bool>,
    keys: Option<MessageKeys>,
    properties: Option<BTreeMap<String, toml::Value>>,
}

/// Key names of the chat app's message JSON, used for notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageKeys {
    /// Key of the sender name.
    pub sender: String,
    /// Key of the text.
    pub message: String,
    /// Key of the time (epoch seconds).
    pub time: String,
    /// Key of the end-of-conversation flag.
    pub end: String,
}

impl Default for MessageKeys {
    fn default() -> Self {
        MessageKeys {
            sender: "sender".into(),
            message: "message".into(),
            time: "time".into(),
            end: "end".into(),
        }
    }
}

/// Kafka settings for `notify` and `extract --from-kafka`.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: Option<String>,
    /// Topic notifications go to.
    pub topic: Option<String>,
    /// `client.id`.
    pub client_id: String,
    /// How long to wait for the broker, in seconds.
    pub timeout_s: f64,
    /// Sender name of notifications.
    pub sender: String,
    /// Find a day's first and last offsets with the broker's time look-up (ListOffsets); when
    /// false, or when the look-up gives no usable offset, scan from the earliest offset.
    pub time_lookup: bool,
    /// Message key names.
    pub keys: MessageKeys,
    /// librdkafka properties passed through (SASL, SSL, ...). Values of keys that look secret
    /// are masked by `chatetl config`.
    #[serde(serialize_with = "ser_masked")]
    pub properties: BTreeMap<String, String>,
}

fn ser_masked<S: serde::Serializer>(
    props: &BTreeMap<String, String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(props.len()))?;
    for (k, v) in props {
        let secret = ["password", "secret", "key", "token", "jaas"]
            .iter()
            .any(|w| k.to_lowercase().contains(w))
            && !k.ends_with(".location");
        m.serialize_entry(k, if secret { "********" } else { v.as_str() })?;
    }
    m.end()
}

/// Kafka values given on a command line.
#[derive(Debug, Clone, Default)]
pub struct KafkaFlags {
    /// `--brokers`.
    pub brokers: Option<String>,
    /// `--topic`.
    pub topic: Option<String>,
    /// `--timeout` in seconds.
    pub timeout_s: Option<f64>,
}

/// Settings every stage trusts.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Root directory of the input logs.
    pub input_root: PathBuf,
    /// Root directory of all output.
    pub output_root: PathBuf,
    /// Zone of naive times in the logs.
    #[serde(serialize_with = "ser_tz")]
    pub tz: Tz,
    /// Optional discovery pattern with `{date}`/`{date:FMT}` and `{room}` placeholders.
    pub input_pattern: Option<String>,
    /// Longest accepted input line in bytes; longer lines are rejected.
    pub max_line_bytes: usize,
    /// Share of non-blank lines that may be rejected before extract fails with 65.
    pub max_reject_ratio: f64,
    /// Memory budget for buffering rows, in MiB.
    pub memory_budget_mb: u64,
    /// Codec of the Parquet files written (messages and aggregates).
    #[serde(serialize_with = "ser_display")]
    pub compression: Codec,
    /// Sender IDs whose records are system messages.
    pub system_senders: Vec<String>,
    /// Words left out of the aggregates' word counts (compared lower-cased).
    pub stop_words: Vec<String>,
    /// Field-name aliases.
    pub fields: FieldAliases,
    /// Kafka (notify, extract --from-kafka).
    pub kafka: KafkaSettings,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// JSON summary on stdout.
    #[serde(skip)]
    pub json: bool,
    /// Verbosity: -1 quiet, 0 normal, 1+ verbose.
    #[serde(skip)]
    pub verbosity: i8,
    /// Where each value came from.
    #[serde(skip)]
    pub sources: BTreeMap<&'static str, Source>,
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The compression codec of the Parquet files: zstd (at a level), snappy, lz4 (Parquet's
/// `LZ4_RAW`) or none. Written `zstd`, `zstd:LEVEL`, `snappy`, `lz4`, `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd at a level from 1 to 22.
    Zstd(u8),
    Snappy,
    Lz4,
    None,
}

impl Default for Codec {
    /// zstd level 1: 6% larger files than level 3 for a third less compression time.
    fn default() -> Self {
        Codec::Zstd(1)
    }
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Codec, String> {
        let bad = || {
            format!(
                "unknown compression {s:?}: expected zstd, zstd:LEVEL (1 to 22), snappy, lz4 or none"
            )
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "zstd" => Ok(Codec::Zstd(1)),
            "snappy" => Ok(Codec::Snappy),
            "lz4" => Ok(Codec::Lz4),
            "none" => Ok(Codec::None),
            other => match other.strip_prefix("zstd:").map(str::parse::<u32>) {
                Some(Ok(level @ 1..=22)) => Ok(Codec::Zstd(level as u8)),
                Some(Ok(level)) => Err(format!("zstd level {level} is not between 1 and 22")),
                _ => Err(bad()),
            },
        }
    }
}

/// In the config file, the same words as in the environment.
impl<'de> Deserialize<'de> for Codec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Codec, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Zstd(1) => f.write_str("zstd"),
            Codec::Zstd(level) => write!(f, "zstd:{level}"),
            Codec::Snappy => f.write_str("snappy"),
            Codec::Lz4 => f.write_str("lz4"),
            Codec::None => f.write_str("none"),
        }
    }
}

fn ser_tz<S: serde::Serializer>(tz: &Tz, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(tz.name())
}

/// Default system senders: records from these are `kind = "system"`.
pub fn default_system_senders() -> Vec<String> {
    [
        "[INFO]", "INFO", "AIRFLOW", "airflow", "bot", "system", "SYSTEM", "chatetl",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Reads the environment through a function so tests need not mutate the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Settings {
    /// Builds settings from flags, the real process environment and the config file.
    pub fn load(args: &GlobalArgs) -> Result<Settings> {
        Settings::load_with(args, &|k| std::env::var(k).ok())
    }

    /// Builds settings with an explicit environment lookup.
    pub fn load_with(args: &GlobalArgs, env: EnvLookup<'_>) -> Result<Settings> {
        let (file, config_file) = read_config_file(args, env)?;
        let mut sources = BTreeMap::new();

        macro_rules! pick {
            ($key:literal, $flag:expr, $env:literal, $parse:expr, $file:expr, $default:expr) => {{
                if let Some(v) = $flag {
                    sources.insert($key, Source::Flag);
                    v
                } else if let Some(raw) = env($env).filter(|s| !s.is_empty()) {
                    sources.insert($key, Source::Env);
                    let parse = $parse;
                    parse(&raw).map_err(|e: String| {
                        Error::Config(format!("environment variable {}={raw:?}: {e}", $env))
                    })?
                } else if let Some(v) = $file {
                    sources.insert($key, Source::File);
                    v
                } else {
                    sources.insert($key, Source::Default);
                    $default
                }
            }};
        }

        let as_path = |s: &str| Ok::<_, String>(PathBuf::from(s));
        let as_string = |s: &str| Ok::<_, String>(s.to_string());
        let input_root = pick!(
            "input_root",
            args.input_root.clone(),
            "CHATETL_INPUT_ROOT",
            as_path,
            file.input_root,
            PathBuf::from("sample_logs")
        );
        let output_root = pick!(
            "output_root",
            args.output_root.clone(),
            "CHATETL_OUTPUT_ROOT",
            as_path,
            file.output_root,
            PathBuf::from("out")
        );
        let tz_name = pick!(
            "tz",
            args.tz.clone(),
            "CHATETL_TZ",
            as_string,
            file.tz,
            system_zone(env)
        );
        let tz = parse_tz(&tz_name).map_err(Error::Config)?;
        let input_pattern = pick!(
            "input_pattern",
            None::<Option<String>>,
            "CHATETL_INPUT_PATTERN",
            |s: &str| Ok::<_, String>(Some(s.to_string())),
            file.input_pattern.map(Some),
            None
        );
        let max_line_bytes = pick!(
            "max_line_bytes",
            None,
            "CHATETL_MAX_LINE_BYTES",
            |s: &str| s.parse::<usize>().map_err(|e| e.to_string()),
            file.max_line_bytes,
            1 << 20
        );
        let max_reject_ratio = pick!(
            "max_reject_ratio",
            None,
            "CHATETL_MAX_REJECT_RATIO",
            |s: &str| s.parse::<f64>().map_err(|e| e.to_string()),
            file.max_reject_ratio,
            0.5
        );
        let memory_budget_mb = pick!(
            "memory_budget_mb",
            None,
            "CHATETL_MEMORY_BUDGET_MB",
            |s: &str| s.parse::<u64>().map_err(|e| e.to_string()),
            file.memory_budget_mb,
            512
        );
        let compression = pick!(
            "compression",
            None,
            "CHATETL_COMPRESSION",
            |s: &str| s.parse::<Codec>(),
            file.compression,
            Codec::default()
        );
        let system_senders = pick!(
            "system_senders",
            None,
            "CHATETL_SYSTEM_SENDERS",
            |s: &str| Ok::<_, String>(s.split(',').map(|x| x.trim().to_string()).collect()),
            file.system_senders,
            default_system_senders()
        );
        let stop_words = pick!(
            "stop_words",
            None,
            "CHATETL_STOP_WORDS",
            |s: &str| Ok::<_, String>(
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            ),
            file.stop_words,
            crate::stage::aggregate::DEFAULT_STOP_WORDS
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        let fields = match file.fields {
            Some(f) => {
                sources.insert("fields", Source::File);
                f
            }
            None => {
                sources.insert("fields", Source::Default);
                FieldAliases::default()
            }
        };

        let kf = file.kafka.unwrap_or_default();
        let brokers = pick!(
            "kafka.brokers",
            None::<Option<String>>,
            "CHATETL_KAFKA_BROKERS",
            |s: &str| Ok::<_, String>(Some(s.to_string())),
            kf.brokers.map(Some),
            None
        );
        let topic = pick!(
            "kafka.topic",
            None::<Option<String>>,
            "CHATETL_KAFKA_TOPIC",
            |s: &str| Ok::<_, String>(Some(s.to_string())),
            kf.topic.map(Some),
            None
        );
        let client_id = pick!(
            "kafka.client_id",
            None,
            "CHATETL_KAFKA_CLIENT_ID",
            as_string,
            kf.client_id,
            "chatetl".to_string()
        );
        let timeout_s = pick!(
            "kafka.timeout_s",
            None,
            "CHATETL_KAFKA_TIMEOUT",
            |s: &str| s.parse::<f64>().map_err(|e| e.to_string()),
            kf.timeout_s,
            10.0
        );
        let mut properties = BTreeMap::new();
        for (k, v) in kf.properties.unwrap_or_default() {
            let v = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(Error::Config(format!(
                        "kafka.properties.{k} must be a string, number or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            properties.insert(k, v);
        }
        for (key, in_file) in [
            ("kafka.sender", kf.sender.is_some()),
            ("kafka.time_lookup", kf.time_lookup.is_some()),
            ("kafka.keys", kf.keys.is_some()),
            ("kafka.properties", !properties.is_empty()),
        ] {
            sources.insert(
                key,
                if in_file {
                    Source::File
                } else {
                    Source::Default
                },
            );
        }
        if config_file.is_some() {
            sources.insert(
                "config_file",
                if args.config.is_some() {
                    Source::Flag
                } else if env("CHATETL_CONFIG").is_some_and(|s| !s.is_empty()) {
                    Source::Env
                } else {
                    Source::Default
                },
            );
        }
        let kafka = KafkaSettings {
            brokers,
            topic,
            client_id,
            timeout_s,
            sender: kf.sender.unwrap_or_else(|| "chatetl".into()),
            time_lookup: kf.time_lookup.unwrap_or(true),
            keys: kf.keys.unwrap_or_default(),
            properties,
        };

        let settings = Settings {
            input_root,
            output_root,
            tz,
            input_pattern,
            max_line_bytes,
            max_reject_ratio,
            memory_budget_mb,
            compression,
            system_senders,
            stop_words: stop_words.into_iter().map(|w| w.to_lowercase()).collect(),
            fields,
            kafka,
            config_file,
            json: args.json,
            verbosity: if args.quiet {
                -1
            } else {
                args.verbose.min(3) as i8
            },
            sources,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Overrides the reject threshold from a stage flag.
    pub fn with_max_reject_ratio(mut self, ratio: Option<f64>) -> Result<Settings> {
        if let Some(r) = ratio {
            self.max_reject_ratio = r;
            self.sources.insert("max_reject_ratio", Source::Flag);
            self.validate()?;
        }
        Ok(self)
    }

    /// Overrides Kafka values from a stage's flags.
    pub fn with_kafka_flags(mut self, flags: &KafkaFlags) -> Result<Settings> {
        if let Some(b) = &flags.brokers {
            self.kafka.brokers = Some(b.clone());
            self.sources.insert("kafka.brokers", Source::Flag);
        }
        if let Some(t) = &flags.topic {
            self.kafka.topic = Some(t.clone());
            self.sources.insert("kafka.topic", Source::Flag);
        }
        if let Some(t) = flags.timeout_s {
            self.kafka.timeout_s = t;
            self.sources.insert("kafka.timeout_s", Source::Flag);
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        let k = &self.kafka;
        if !(k.timeout_s.is_finite() && k.timeout_s > 0.0 && k.timeout_s <= 3600.0) {
            return Err(Error::Config(format!(
                "kafka timeout must be between 0 and 3600 seconds, got {}",
                k.timeout_s
            )));
        }
        for (name, v) in [
            ("sender", &k.keys.sender),
            ("message", &k.keys.message),
            ("time", &k.keys.time),
            ("end", &k.keys.end),
        ] {
            if v.is_empty() {
                return Err(Error::Config(format!(
                    "kafka.keys.{name} must not be empty"
                )));
            }
        }
        if k.brokers.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return Err(Error::Config("kafka brokers must not be empty".into()));
        }
        if !(0.0..=1.0).contains(&self.max_reject_ratio) {
            return Err(Error::Config(format!(
                "max_reject_ratio must be between 0 and 1, got {}",
                self.max_reject_ratio
            )));
        }
        if self.max_line_bytes < 64 {
            return Err(Error::Config("max_line_bytes must be at least 64".into()));
        }
        if self.memory_budget_mb < 16 {
            return Err(Error::Config("memory_budget_mb must be at least 16".into()));
        }
        if let Some(p) = &self.input_pattern {
            crate::input::Pattern::compile(p)?;
        }
        for (name, list) in [
            ("sender", &self.fields.sender),
            ("message", &self.fields.message),
            ("time", &self.fields.time),
            ("room", &self.fields.room),
            ("offset", &self.fields.offset),
        ] {
            if list.is_empty() {
                return Err(Error::Config(format!(
                    "fields.{name} must name at least one key"
                )));
            }
        }
        if self.output_root.as_os_str().is_empty() || self.input_root.as_os_str().is_empty() {
            return Err(Error::Config(
                "input_root and output_root must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML-like lines with their sources, for `chatetl config`.
    pub fn describe(&self) -> String {
        let value = serde_json::to_value(self).expect("settings serialize");
        let mut out = String::new();
        if let serde_json::Value::Object(map) = value {
            let mut entries = Vec::new();
            for (k, v) in map {
                match v {
                    serde_json::Value::Object(inner) if k == "kafka" => {
                        entries.extend(inner.into_iter().map(|(ik, iv)| (format!("{k}.{ik}"), iv)))
                    }
                    v => entries.push((k, v)),
                }
            }
            for (k, v) in entries {
                let source = self
                    .sources
                    .get(k.as_str())
                    .map(|s| format!("{s:?}").to_lowercase())
                    .unwrap_or_else(|| "-".into());
                out.push_str(&format!("{k} = {v}    # {source}\n"));
            }
        }
        out
    }

    /// The effective configuration as JSON, with sources.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "settings": self, "sources": self.sources })
    }
}

fn read_config_file(
    args: &GlobalArgs,
    env: EnvLookup<'_>,
) -> Result<(FileConfig, Option<PathBuf>)> {
    let (path, required) = match (
        &args.config,
        env("CHATETL_CONFIG").filter(|s| !s.is_empty()),
    ) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok((FileConfig::default(), None));
        }
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read config file {}: {e}",
                path.display()
            )));
        }
    };
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_string();
        let line = e
            .span()
            .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        Error::Config(format!("config file {}{line}: {msg}", path.display()))
    })?;
    Ok((file, Some(path)))
}

/// The system's zone: `TZ` when set, else the zone the OS reports, else UTC.
fn system_zone(env: EnvLookup<'_>) -> String {
    if let Some(tz) = env("TZ").filter(|s| !s.is_empty()) {
        let tz = tz.trim_start_matches(':');
        let tz = tz.strip_prefix("/usr/share/zoneinfo/").unwrap_or(tz);
        if parse_tz(tz).is_ok() {
            return tz.to_string();
        }
    }
    iana_time_zone::get_timezone()
        .ok()
        .filter(|z| parse_tz(z).is_ok())
        .unwrap_or_else(|| "UTC".to_string())
}

/// Parses an IANA zone name.
pub fn parse_tz(name: &str) -> std::result::Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone '{name}' (expected an IANA name such as Asia/Seoul)")
    })
}

/// Canonical form of a path for comparisons, even when it does not exist yet.
pub fn normalize_path(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(args: GlobalArgs, env: &[(&str, &str)]) -> Result<Settings> {
        let mut env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Never read the repository's own chatetl.toml from unit tests.
        env.entry("CHATETL_CONFIG".into())
            .or_insert_with(|| "/dev/null".into());
        Settings::load_with(&args, &|k| env.get(k).cloned())
    }

    fn with_file(text: &str) -> (tempfile::TempDir, GlobalArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let args = GlobalArgs {
            config: Some(path),
            ..Default::default()
        };
        (dir, args)
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let s = load(GlobalArgs::default(), &[("TZ", "UTC")]).unwrap();
        assert_eq!(s.input_root, PathBuf::from("sample_logs"));
        assert_eq!(s.output_root, PathBuf::from("out"));
        assert_eq!(s.tz, chrono_tz::UTC);
        assert_eq!(s.max_reject_ratio, 0.5);
        assert_eq!(s.sources["output_root"], Source::Default);
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let (_d, mut args) = with_file("output_root = \"from_file\"\ntz = \"Asia/Seoul\"\n");
        let s = load(args.clone(), &[]).unwrap();
        assert_eq!(s.output_root, PathBuf::from("from_file"));
        assert_eq!(s.sources["output_root"], Source::File);
        let s = load(args.clone(), &[("CHATETL_OUTPUT_ROOT", "from_env")]).unwrap();
        assert_eq!(s.output_root, PathBuf::from("from_env"));
        assert_eq!(s.sources["output_root"], Source::Env);
        args.output_root = Some("from_flag".into());
        let s = load(args, &[("CHATETL_OUTPUT_ROOT", "from_env")]).unwrap();
        assert_eq!(s.output_root, PathBuf::from("from_flag"));
        assert_eq!(s.tz, chrono_tz::Asia::Seoul);
    }

    #[test]
    fn compression_from_file_and_environment() {
        let s = load(GlobalArgs::default(), &[("TZ", "UTC")]).unwrap();
        assert_eq!(s.compression, Codec::Zstd(1));
        let (_d, args) = with_file("compression = \"snappy\"\n");
        let s = load(args.clone(), &[]).unwrap();
        assert_eq!(
            (s.compression, s.sources["compression"]),
            (Codec::Snappy, Source::File)
        );
        let s = load(args, &[("CHATETL_COMPRESSION", "ZSTD:9")]).unwrap();
        assert_eq!(
            (s.compression, s.sources["compression"]),
            (Codec::Zstd(9), Source::Env)
        );
        for (text, codec) in [
            ("zstd", Codec::Zstd(1)),
            ("zstd:1", Codec::Zstd(1)),
            ("zstd:22", Codec::Zstd(22)),
            (" lz4 ", Codec::Lz4),
            ("none", Codec::None),
        ] {
            assert_eq!(text.parse::<Codec>(), Ok(codec));
            assert_eq!(codec.to_string().parse::<Codec>(), Ok(codec));
        }
        for bad in ["gzip", "zstd:", "zstd:x", "zstd:-1", ""] {
            let e = bad.parse::<Codec>().unwrap_err();
            assert!(e.contains("expected zstd, zstd:LEVEL"), "{bad:?}: {e}");
        }
        for level in ["0", "23", "300"] {
            let e = format!("zstd:{level}").parse::<Codec>().unwrap_err();
            assert_eq!(e, format!("zstd level {level} is not between 1 and 22"));
        }
        let (_d, args) = with_file("tz = \"UTC\"\ncompression = \"brotli\"\n");
        let e = load(args, &[]).unwrap_err();
        assert_eq!(e.exit_code().code(), 78);
        assert!(e.to_string().contains("brotli"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = load(GlobalArgs::default(), &[("CHATETL_COMPRESSION", "zstd:30")]).unwrap_err();
        assert!(e.to_string().contains("CHATETL_COMPRESSION"), "{e}");
    }

    #[test]
    fn unknown_key_is_a_config_error_naming_the_line() {
        let (_d, args) = with_file("tz = \"UTC\"\noutptu_root = \"x\"\n");
        let e = load(args, &[]).unwrap_err();
        assert_eq!(e.exit_code().code(), 78);
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("outptu_root"), "{e}");
    }

    #[test]
    fn unknown_field_alias_key_is_an_error() {
        let (_d, args) = with_file("[fields]\nsendr = [\"a\"]\n");
        assert_eq!(load(args, &[]).unwrap_err().exit_code().code(), 78);
    }

    #[test]
    fn bad_values_are_config_errors() {
        let (_d, args) = with_file("tz = \"Mars/Olympus\"\n");
        assert_eq!(load(args, &[]).unwrap_err().exit_code().code(), 78);
        let e = load(
            GlobalArgs::default(),
            &[("CHATETL_MAX_REJECT_RATIO", "lots")],
        )
        .unwrap_err();
        assert_eq!(e.exit_code().code(), 78);
        let e = load(
            GlobalArgs::default(),
            &[("CHATETL_MAX_REJECT_RATIO", "1.5")],
        )
        .unwrap_err();
        assert_eq!(e.exit_code().code(), 78);
    }

    #[test]
    fn explicit_missing_config_file_is_an_error() {
        let args = GlobalArgs {
            config: Some("/nonexistent/chatetl.toml".into()),
            ..Default::default()
        };
        assert_eq!(load(args, &[]).unwrap_err().exit_code().code(), 78);
    }

    #[test]
    fn tz_from_tz_variable() {
        let s = load(GlobalArgs::default(), &[("TZ", ":Europe/Paris")]).unwrap();
        assert_eq!(s.tz, chrono_tz::Europe::Paris);
    }

    #[test]
    fn stop_words_come_from_the_environment_lower_cased() {
        let s = load(
            GlobalArgs::default(),
            &[("CHATETL_STOP_WORDS", "Foo, 오늘 ,")],
        )
        .unwrap();
        assert_eq!(s.stop_words, ["foo", "오늘"]);
        let d = load(GlobalArgs::default(), &[]).unwrap();
        assert!(d.stop_words.contains(&"the".to_string()));
    }

    #[test]
    fn kafka_settings_from_file_env_and_flags() {
        let (_d, args) = with_file(
            "[kafka]\nbrokers = \"b1:9092\"\ntopic = \"room-a\"\n[kafka.keys]\nsender = \"user\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"message.max.bytes\" = 100000\n",
        );
        let s = load(args.clone(), &[("CHATETL_KAFKA_TOPIC", "room-b")]).unwrap();
        assert_eq!(s.kafka.brokers.as_deref(), Some("b1:9092"));
        assert_eq!(s.kafka.topic.as_deref(), Some("room-b"));
        assert_eq!(s.kafka.keys.sender, "user");
        assert_eq!(s.kafka.keys.end, "end");
        assert_eq!(s.kafka.properties["message.max.bytes"], "100000");
        assert_eq!(s.kafka.timeout_s, 10.0);
        let d = s.describe();
        assert!(d.contains("kafka.topic = \"room-b\"    # env"), "{d}");
        assert!(!d.contains("hunter2"), "{d}");
        let s = s
            .with_kafka_flags(&KafkaFlags {
                brokers: Some("b2:1".into()),
                topic: None,
                timeout_s: Some(2.5),
            })
            .unwrap();
        assert_eq!(s.kafka.brokers.as_deref(), Some("b2:1"));
        assert_eq!(s.kafka.timeout_s, 2.5);
        let bad = load(GlobalArgs::default(), &[("CHATETL_KAFKA_TIMEOUT", "0")]);
        assert_eq!(bad.unwrap_err().exit_code().code(), 78);
        let (_d, args) = with_file("[kafka]\nbrokerz = \"x\"\n");
        assert_eq!(load(args, &[]).unwrap_err().exit_code().code(), 78);
    }

    #[test]
    fn describe_lists_sources() {
        let s = load(GlobalArgs::default(), &[("CHATETL_TZ", "Asia/Seoul")]).unwrap();
        let d = s.describe();
        assert!(d.contains("tz = \"Asia/Seoul\"    # env"), "{d}");
        assert!(d.contains("# default"), "{d}");
    }
}
