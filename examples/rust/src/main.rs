//! A workflow worker in Rust that leaves the hard guarantees to workflow_ext.
//!
//! `cargo run -- --check` races 16 connections on one run and asserts what
//! the extension promises; without `--check` it narrates the same run.
//! Connection: PGHOST / PGPORT / PGUSER; any of them unset is taken from the
//! project cluster (`bash scripts/cluster.sh env` of this checkout).

use std::collections::{HashMap, HashSet};
use std::env;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use tokio::sync::Barrier;
use tokio_postgres::{error::SqlState, Client, NoTls};

const WORKERS: usize = 16;
const STEPS: usize = 50;
const ITEMS: usize = 5;

/// What a worker does with an error, decided by SQLSTATE alone.
#[derive(Debug, PartialEq)]
enum Outcome {
    AlreadyExists,             // 23505 on workflow_events_entity_creation_unique
    IllegalTransition(String), // 55000, DETAIL "anomaly: <code>; …"
    MissingRunOrEntity,        // 23503
    BadInput,                  // 22004 / 22023 / 22001
    Retry,                     // 40001: retry the transaction
    Other(String),
}

fn classify(e: &tokio_postgres::Error) -> Outcome {
    let Some(db) = e.as_db_error() else {
        return Outcome::Other(e.to_string());
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION
        && db.constraint() == Some("workflow_events_entity_creation_unique")
    {
        Outcome::AlreadyExists
    } else if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE {
        let anomaly = db
            .detail()
            .and_then(|d| d.strip_prefix("anomaly: "))
            .and_then(|d| d.split(';').next());
        Outcome::IllegalTransition(anomaly.unwrap_or("?").to_string())
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        Outcome::MissingRunOrEntity
    } else if [
        SqlState::NULL_VALUE_NOT_ALLOWED,
        SqlState::INVALID_PARAMETER_VALUE,
        SqlState::STRING_DATA_RIGHT_TRUNCATION,
    ]
    .contains(code)
    {
        Outcome::BadInput
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE {
        Outcome::Retry
    } else {
        Outcome::Other(format!("{}: {}", code.code(), db.message()))
    }
}

/// PGHOST / PGPORT / PGUSER from the environment; when unset, where the
/// project cluster listens, as the checkout's `scripts/cluster.sh env` says
/// (asked once). The checkout is found from this crate's manifest directory.
fn setting(name: &str) -> String {
    static CLUSTER: OnceLock<HashMap<String, String>> = OnceLock::new();
    if let Ok(v) = env::var(name) {
        if !v.is_empty() {
            return v;
        }
    }
    let cluster = CLUSTER.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh");
        let out = Command::new("bash").arg(&script).arg("env").output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "{name} is not set and {} env failed ({why}): set PGHOST, PGPORT, PGUSER",
                    script.display()
                );
                std::process::exit(1);
            }
        }
    });
    match cluster.get(name) {
        Some(v) => v.clone(),
        None => {
            eprintln!("{name} is not set and scripts/cluster.sh env does not print it");
            std::process::exit(1);
        }
    }
}

async fn connect(db: &str) -> Client {
    let host = setting("PGHOST");
    let port = setting("PGPORT");
    let user = setting("PGUSER");
    let (client, conn) = tokio_postgres::connect(
        &format!("host={host} port={port} user={user} dbname={db}"),
        NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    client
}

const APP_DDL: &str = "create schema if not exists example_app; \
     create table if not exists example_app.jobs (id bigint primary key, run_id text not null)";

#[tokio::main]
async fn main() {
    let check = env::args().any(|a| a == "--check");
    let db = format!("wfx_example_rust_{}", std::process::id());
    let admin = connect("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    connect(&db)
        .await
        .batch_execute("CREATE EXTENSION workflow_ext")
        .await
        .unwrap();

    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(what);

    // Every worker bootstraps the app schema at start-up, all at once:
    // exactly one applies it, nobody fails.
    let gate = Arc::new(Barrier::new(WORKERS));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (db, gate) = (db.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(&db).await;
            gate.wait().await;
            let applied: bool = c
                .query_one(
                    "SELECT workflow_ext.bootstrap($1, $2)",
                    &[&"example_app@v1", &APP_DDL],
                )
                .await
                .expect("bootstrap")
                .get(0);
            (c, applied)
        }));
    }
    let mut clients = Vec::new();
    let mut applied = 0;
    for t in tasks {
        let (c, a) = t.await.unwrap();
        applied += a as usize;
        clients.push(Arc::new(c));
    }
    println!("FIGURE: bootstrap: {WORKERS} connections at once, {applied} applied it");
    if applied != 1 {
        fail(format!("bootstrap applied {applied} times"));
    }

    let run = "wrun_rust_example";
    let c0 = clients[0].clone();
    c0.query_one(
        "SELECT * FROM workflow_ext.append_suspension_event($1, NULL, 'run_created')",
        &[&run],
    )
    .await
    .unwrap();
    c0.query_one(
        "SELECT * FROM workflow_ext.append_event($1, NULL, 'run_started')",
        &[&run],
    )
    .await
    .unwrap();

    // The race of #2039: every worker creates every step, in its own order.
    // No retry loop: under READ COMMITTED a loser waits for the winner and
    // gets its row back in the same call.
    let gate = Arc::new(Barrier::new(WORKERS));
    let mut tasks = Vec::new();
    for (w, c) in clients.iter().enumerate() {
        let (c, gate) = (c.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let mut order: Vec<usize> = (0..STEPS).collect();
            order.sort_by_key(|i| (i * 7919 + w * 104729) % STEPS); // a different order per worker
            gate.wait().await;
            let mut seen = Vec::new();
            for i in order {
                let step = format!("step_{i}");
                let row = c.query_one(
                    "SELECT event_id, inserted FROM workflow_ext.append_suspension_event($1, $2, 'step_created')",
                    &[&run, &step]).await.expect("append_suspension_event");
                seen.push((step, row.get::<_, String>(0), row.get::<_, bool>(1)));
            }
            seen
        }));
    }
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    let mut winners: HashMap<String, usize> = HashMap::new();
    let mut calls = 0;
    for t in tasks {
        for (step, id, inserted) in t.await.unwrap() {
            calls += 1;
            ids.entry(step.clone()).or_default().insert(id);
            *winners.entry(step).or_default() += inserted as usize;
        }
    }
    let rows: i64 = c0
        .query_one(
            "SELECT count(*) FROM workflow_ext.events WHERE run_id = $1 AND type = 'step_created'",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    let split = ids.values().filter(|s| s.len() != 1).count();
    let not_one_winner = winners.values().filter(|n| **n != 1).count();
    println!("FIGURE: suspension race: {WORKERS} connections, {calls} calls, {STEPS} keys, {} duplicates, \
              {split} keys whose callers saw different ids, {not_one_winner} keys without exactly one winner",
             rows - STEPS as i64);
    if rows != STEPS as i64 || split != 0 || not_one_winner != 0 {
        fail("suspension race".into());
    }

    // Step lifecycles through append_event, split across workers.
    let mut tasks = Vec::new();
    for (w, c) in clients.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..STEPS).step_by(WORKERS) {
                let step = format!("step_{i}");
                for t in ["step_started", "step_completed"] {
                    c.query_one(
                        "SELECT * FROM workflow_ext.append_event($1, $2, $3)",
                        &[&run, &step, &t],
                    )
                    .await
                    .expect("lifecycle");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // The error map, one example each.
    let cases: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)], Outcome); 4] = [
        (
            "SELECT * FROM workflow_ext.append_event($1, 'step_0', 'step_created')",
            &[&run],
            Outcome::AlreadyExists,
        ),
        (
            "SELECT * FROM workflow_ext.append_event($1, 'step_0', 'step_started')",
            &[&run],
            Outcome::IllegalTransition("event_after_terminal".into()),
        ),
        (
            "SELECT * FROM workflow_ext.append_event('no-such-run', 's', 'step_started')",
            &[],
            Outcome::MissingRunOrEntity,
        ),
        (
            "SELECT * FROM workflow_ext.append_event($1, NULL, 'step_create')",
            &[&run],
            Outcome::BadInput,
        ),
    ];
    let mut mapped = 0;
    for (sql, params, want) in cases {
        match c0.query_one(sql, params).await {
            Err(e) if classify(&e) == want => mapped += 1,
            other => fail(format!("{sql}: expected {want:?}, got {other:?}")),
        }
    }
    println!("FIGURE: errors mapped by SQLSTATE: {mapped}/4 (23505 with constraint name, 55000 + anomaly, 23503, 22023)");

    // Fan-in: items finish on different connections, some delivered twice;
    // exactly one arrival is told to dispatch the successor.
    let mut tasks = Vec::new();
    for (w, c) in clients.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let item = format!("item_{}", w % ITEMS); // 16 deliveries of 5 items
            c.query_one(
                "SELECT workflow_ext.join_arrive($1, 'after_items', $2, $3)",
                &[&run, &item, &(ITEMS as i32)],
            )
            .await
            .expect("join_arrive")
            .get::<_, bool>(0)
        }));
    }
    let mut fires = 0;
    for t in tasks {
        fires += t.await.unwrap() as usize;
    }
    println!("FIGURE: fan-in: {WORKERS} deliveries of {ITEMS} items, successor dispatched {fires} time(s)");
    if fires != 1 {
        fail(format!("fan-in fired {fires} times"));
    }

    let (events, max_seq, anomalies): (i64, i64, i64) = {
        let r = c0
            .query_one(
                "SELECT count(*), max(seq), (SELECT count(*) FROM workflow_ext.replay($1)) \
                              FROM workflow_ext.events WHERE run_id = $1",
                &[&run],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    println!(
        "FIGURE: run log: {events} events, seqs 1..{max_seq}, {anomalies} anomalies on replay"
    );
    if events != max_seq || anomalies != 0 {
        fail("log not dense or not clean".into());
    }

    drop(clients);
    drop(c0);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
    if !check {
        println!("Done: one creation per step, one successor, a clean log.");
    }
    if !failures.is_empty() {
        eprintln!("FAILED: {failures:?}");
        std::process::exit(1);
    }
}
