"""chatetl as an Airflow DAG: one BashOperator per stage for the day that just finished.

    # notify succeeds whatever happened upstream, and Airflow decides a run's state from its last
    # tasks: without this one a run whose extract failed would end "success". It runs only when
    # a stage failed, and fails, so the run is marked failed (and on_failure alerts fire).
    stage_failed = BashOperator(
        task_id="stage_failed",
        bash_command='echo "a chatetl stage failed; the room was told by notify"; exit 1',
        trigger_rule="one_failed",
        retries=0,
    )

    check_log >> extract >> write >> aggregate >> notify
    [check_log, extract, write, aggregate] >> stage_failed

* check_log exits 99 when the day has no logs. BashOperator turns exit code 99 into "skipped"
  (its default skip_on_exit_code), and the stages after it are skipped too.
* Every stage is idempotent, so a retry or a cleared task simply runs again. There is no
  clean-output task: `write` replaces the day's Parquet atomically, so deleting the old output
  first (as the old DAG did) would only leave the day empty if a later stage failed.
* notify runs whatever happened upstream (trigger_rule="all_done") with `--status auto`: chatetl
  reads the outcome each stage recorded in out/status/date=D.json and posts "success",
  "skipped" or "failure" (naming the stage, its exit code and error) to the chat room's topic.
  A task killed by Airflow leaves its stage marked running, which notify reports as a failure.
* stage_failed runs only when a stage failed (trigger_rule="one_failed") and fails, so that the
  DAG run ends "failed" although notify, a last task, succeeded.

Which day: with Airflow 3 a plain cron schedule (`schedule="0 1 * * *"`) uses a trigger
timetable, where the run's data interval is empty and `ds` is the day the run *starts* (today).
This DAG uses CronDataIntervalTimetable instead, so each run covers the previous day, and
`{{ data_interval_start | ds }}` (taken in the DAG's time zone) is the day whose logs are complete.

Configuration comes from the environment of the Airflow worker:
  CHATETL_BIN     path of the chatetl binary (default: chatetl on the PATH)
  CHATETL_CONFIG  chatetl.toml with input_root, output_root, tz and [kafka] brokers/topic
  CHATETL_DAG_TZ  the zone of the schedule and of the day (default Asia/Seoul)
  CHATETL_DAG_RETRIES  retries per task (default 2, five minutes apart)
  or any CHATETL_* variable (CHATETL_INPUT_ROOT, CHATETL_KAFKA_BROKERS, ...), passed through.
chatetl logs the task's try number (AIRFLOW_CTX_TRY_NUMBER) with every log line.
"""

from __future__ import annotations

import os
import shlex

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

CHATETL = shlex.quote(os.environ.get("CHATETL_BIN", "chatetl"))
TZ = os.environ.get("CHATETL_DAG_TZ", "Asia/Seoul")
RETRIES = int(os.environ.get("CHATETL_DAG_RETRIES", "2"))
# The local calendar day the interval starts on (`ds` alone would format the UTC instant, which
# in Asia/Seoul is the day before).
DAY = "{{ data_interval_start.in_timezone('%s') | ds }}" % TZ

with DAG(
    dag_id="chat_logs",
    description="Chat logs of the finished day -> Parquet, aggregates, and a note in the room",
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone=pendulum.timezone(TZ)),
    start_date=pendulum.datetime(2024, 10, 1, tz=TZ),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": pendulum.duration(minutes=5)},
    tags=["chatetl"],
) as dag:

    def stage(task_id: str, args: str, **kwargs) -> BashOperator:
        return BashOperator(
            task_id=task_id,
            bash_command=f"{CHATETL} {args}",
            # Keep the worker's environment (PATH, CHATETL_*); Airflow adds AIRFLOW_CTX_*.
            append_env=True,
            **kwargs,
        )

    check_log = stage("check_log", f"check-log --date {DAY}", retries=0)
    extract = stage("extract", f"extract --date {DAY}")
    write = stage("write", f"write --date {DAY}")
    aggregate = stage("aggregate", f"aggregate --date {DAY}")
    notify = stage(
        "notify",
        f"notify --date {DAY} --status auto",
        trigger_rule="all_done",
    )

    # notify succeeds whatever happened upstream, and Airflow decides a run's state from its last
    # tasks: without this one a run whose extract failed would end "success". It runs only when
    # a stage failed, and fails, so the run is marked failed (and on_failure alerts fire).
    stage_failed = BashOperator(
        task_id="stage_failed",
        bash_command='echo "a chatetl stage failed; the room was told by notify"; exit 1',
        trigger_rule="one_failed",
        retries=0,
    )

    check_log >> extract >> write >> aggregate >> notify
    [check_log, extract, write, aggregate] >> stage_failed
