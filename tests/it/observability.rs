//! The monitoring files against the running code and the real tools: every
//! metric the rules and dashboards name is exported; a real Prometheus
//! scrapes a real master and worker and answers every dashboard panel; a
//! real Alertmanager pages a webhook receiver run here when a worker dies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use ffleet_core::JobState;
use ffleet_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use v1::job_service_client::JobServiceClient;

use crate::helpers::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

fn rule_files() -> Vec<PathBuf> {
    ["recording.yml", "alerts.yml"]
        .iter()
        .map(|f| repo().join("prometheus/rules").join(f))
        .collect()
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = repo().join("deployment/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Every panel query of every dashboard: (dashboard, panel title, expr).
fn panel_queries() -> anyhow::Result<Vec<(String, String, String)>> {
    let mut out = vec![];
    for file in dashboard_files() {
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        let name = dashboard["title"].as_str().unwrap_or_default().to_owned();
        for panel in dashboard["panels"].as_array().context("panels")? {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().context("targets")? {
                let expr = target["expr"].as_str().context("expr")?;
                out.push((name.clone(), title.to_owned(), expr.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Identifiers in `text` that name our metrics (or the process collector's).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            t.starts_with("ffleet_") || t.starts_with("process_") || t.starts_with("ffleet:")
        })
        .map(str::to_owned)
        .collect()
}

/// Metric families a `/metrics` page declares.
async fn exported(url: &str) -> anyhow::Result<BTreeSet<String>> {
    let page = reqwest::get(url).await?.error_for_status()?.text().await?;
    Ok(page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// A histogram's series are its family's name plus a suffix.
fn family_of(name: &str, families: &BTreeSet<String>) -> bool {
    families.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|f| families.contains(f)))
}

/// Work for every metric and panel to show: a success, a failure, a job
/// no worker fits (queue depth by priority), and one left encoding (the
/// per-job bitrate and speed). Returns the encoding one.
async fn put_to_work(client: &mut JobServiceClient<Channel>) -> anyhow::Result<v1::Job> {
    let ok = submit(client, spec(&clip(2, "320x240"), "ok.mp4", "h264-480p")).await?;
    let bad = submit(
        client,
        spec(Path::new("/nonexistent/in.mp4"), "bad.mp4", "h264-480p"),
    )
    .await?;
    let mut huge = spec(&clip(1, "160x120"), "huge.mp4", "h264-480p");
    huge.resources = resources(64_000, 1 << 30);
    huge.priority = 5;
    submit(client, huge).await?;
    let done = wait_final(client, &ok.id, Duration::from_secs(60)).await?;
    assert_eq!(state_of(&done), JobState::Succeeded, "{done:?}");
    let done = wait_final(client, &bad.id, Duration::from_secs(60)).await?;
    assert_eq!(state_of(&done), JobState::Failed, "{done:?}");
    let long = submit(client, spec(&clip(60, "320x240"), "long.mp4", "h264-1080p")).await?;
    wait_encoding(client, &long.id).await?;

    Ok(long)
}

#[tokio::test]
async fn every_metric_in_rules_and_dashboards_is_exported() -> anyhow::Result<()> {
    let (cluster, mut client) = Cluster::with_worker().await?;
    let long = put_to_work(&mut client).await?;
    let mut families = exported(&cluster.master.metrics_url).await?;
    families.extend(exported(&cluster.workers[0].metrics_url).await?);

    let recording = std::fs::read_to_string(&rule_files()[0])?;
    let recorded: BTreeSet<String> = recording
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(|r| r.trim().to_owned())
        .collect();
    assert!(!recorded.is_empty());

    let mut used = BTreeSet::new();
    for file in rule_files() {
        used.extend(metric_names(&std::fs::read_to_string(&file)?));
    }
    for (_, _, expr) in panel_queries()? {
        used.extend(metric_names(&expr));
    }
    assert!(used.len() > 20, "too few metrics found: {used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            if name.contains(':') {
                !recorded.contains(*name)
            } else {
                !family_of(name, &families)
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "named in rules or dashboards but not exported: {missing:?}\nexported: {families:?}"
    );
    client
        .cancel_job(v1::CancelJobRequest { id: long.id })
        .await?;
    Ok(())
}

/// A free port on loopback for a tool that wants one on its command line.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .with_context(|| {
            format!("{name} is not installed: scripts/install-deps.sh installs it from Debian's packages")
        })
}

fn spawn_tool(name: &str, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(tool(name)?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// A POST received: its path and JSON body.
type Notification = (String, serde_json::Value);

/// An HTTP receiver on loopback (Alertmanager's webhook, an OTLP/HTTP JSON
/// collector): every POST's path and JSON body.
async fn http_sink() -> anyhow::Result<(u16, mpsc::UnboundedReceiver<Notification>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let body = serde_json::from_slice(&buf[end + 4..end + 4 + length])
                        .unwrap_or(serde_json::Value::Null);
                    let _ = tx.send((path, body));
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    Ok((port, rx))
}

async fn prometheus_query(base: &str, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let reply: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await?
        .json()
        .await?;
    if reply["status"] != "success" {
        bail!("query {expr:?} failed: {reply}");
    }
    Ok(reply["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[tokio::test]
async fn prometheus_answers_every_panel_and_alertmanager_pages_a_lost_worker() -> anyhow::Result<()>
{
    let (mut cluster, mut client) = Cluster::with_worker().await?;
    let dir = cluster.dir().to_owned();
    let host = |url: &str| {
        url.trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_owned()
    };

    // Alertmanager: the repository's routes, its webhooks pointed at ours,
    // and the page route's group wait cut from 10 s to 1 s.
    let (hook_port, mut pages) = http_sink().await?;
    let am_config =
        std::fs::read_to_string(repo().join("deployment/alertmanager/alertmanager.yml"))?
            .replace("127.0.0.1:9095", &format!("127.0.0.1:{hook_port}"))
            .replace("group_wait: 10s", "group_wait: 1s");
    std::fs::write(dir.join("alertmanager.yml"), am_config)?;
    let am_port = free_port()?;
    let _alertmanager = spawn_tool(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".into(),
        ],
        &dir.join("alertmanager.log"),
    )?;

    // Prometheus: the repository's rules, scraping this test's master and
    // worker every second.
    let rules: Vec<String> = rule_files()
        .iter()
        .map(|p| format!("  - {}", p.display()))
        .collect();
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n{}\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
         scrape_configs:\n\
         \x20 - job_name: ffleet-master\n    static_configs:\n      - targets: ['{}']\n\
         \x20 - job_name: ffleet-worker\n    static_configs:\n      - targets: ['{}']\n",
        rules.join("\n"),
        host(&cluster.master.metrics_url),
        host(&cluster.workers[0].metrics_url),
    );
    std::fs::write(dir.join("prometheus.yml"), prom_config)?;
    let prom_port = free_port()?;
    let _prometheus = spawn_tool(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &dir.join("prometheus.log"),
    )?;
    let prom = format!("http://127.0.0.1:{prom_port}");

    let long = put_to_work(&mut client).await?;

    // Both targets up, and enough samples for 5-minute rates.
    let prom_ref = &prom;
    eventually(Duration::from_secs(60), || async move {
        let up = prometheus_query(prom_ref, "sum(up)").await?;
        Ok(up
            .first()
            .and_then(|r| r["value"][1].as_str())
            .is_some_and(|v| v == "2"))
    })
    .await
    .with_context(|| "prometheus never scraped both targets".to_owned())?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut empty = vec![];
    for (dashboard, panel, expr) in panel_queries()? {
        let expr = expr.replace("$instance", ".+");
        let result = prometheus_query(&prom, &expr).await?;
        if result.is_empty() {
            empty.push(format!("{dashboard} / {panel}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    let _ = client
        .cancel_job(v1::CancelJobRequest {
            id: long.id.clone(),
        })
        .await;
    wait_final(&mut client, &long.id, Duration::from_secs(30)).await?;

    // Kill the worker: the master declares it lost after the lease TTL,
    // the rule fires, Alertmanager pages.
    cluster.workers[0].child.kill().await?;
    let killed = std::time::Instant::now();
    let page = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some((path, body)) = pages.recv().await {
            let lost = body["alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["labels"]["alertname"] == "FfleetWorkerLost" && a["status"] == "firing"
                })
            });
            if lost {
                return Some((path, body));
            }
        }
        None
    })
    .await
    .context("no page for the lost worker within 90 s")?
    .context("webhook receiver stopped")?;
    let (path, body) = page;
    assert_eq!(path, "/pages", "routed as a page: {body}");
    assert_eq!(body["commonLabels"]["severity"], "page", "{body}");
    eprintln!(
        "figure: page received {:?} after the kill, at {path}: {body}",
        killed.elapsed()
    );
    Ok(())
}

/// Spans by service from OTLP/HTTP JSON export requests:
/// (service, span name, trace id).
fn spans_of(body: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for resource in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                out.push((
                    service.clone(),
                    span["name"].as_str().unwrap_or_default().to_owned(),
                    span["traceId"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn one_job_is_one_trace_across_master_and_worker() -> anyhow::Result<()> {
    // The collector: this test, on loopback, over OTLP/HTTP with JSON.
    let (port, mut exports) = http_sink().await?;
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let mut cluster = Cluster::start(MasterConfig {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..MasterConfig::default()
    })
    .await?;
    cluster.spawn_worker("w1", &[]).await?;
    let mut client = cluster.client().await?;
    let job = submit(
        &mut client,
        spec(&clip(1, "160x120"), "traced.mp4", "h264-480p"),
    )
    .await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(state_of(&done), JobState::Succeeded, "{done:?}");

    // Every span of the job, from both processes, in one trace.
    let wanted = [
        ("ffleet-master", "job.submit"),
        ("ffleet-master", "job.lease"),
        ("ffleet-worker", "job.run"),
        ("ffleet-worker", "ffmpeg"),
        ("ffleet-master", "job.complete"),
    ];
    let mut seen: Vec<(String, String, String)> = vec![];
    let traces = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((path, body)) = exports.recv().await {
            assert_eq!(path, "/v1/traces");
            seen.extend(spans_of(&body));
            let ids: Vec<Option<&String>> = wanted
                .iter()
                .map(|(service, name)| {
                    seen.iter()
                        .find(|(s, n, _)| s == service && n == name)
                        .map(|(_, _, trace)| trace)
                })
                .collect();
            if ids.iter().all(Option::is_some) {
                return ids.into_iter().flatten().cloned().collect::<Vec<_>>();
            }
        }
        vec![]
    })
    .await
    .with_context(|| format!("spans seen: {seen:?}\n{}", cluster.logs()))?;
    assert_eq!(traces.len(), wanted.len());
    assert!(
        traces.iter().all(|t| t == &traces[0] && !t.is_empty()),
        "the job's spans are in different traces: {:?}",
        wanted.iter().zip(&traces).collect::<Vec<_>>()
    );
    eprintln!("one trace {}: {:?}", traces[0], wanted);
    Ok(())
}
