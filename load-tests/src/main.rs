//! `ffleet-load SCENARIO`: load tests against real ffleet processes on
//! loopback. Each scenario writes `<out>/<scenario>.json` and
//! `<out>/<scenario>.md` and prints the Markdown. See docs/PERFORMANCE.md.

mod cluster;
mod progress;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;

use cluster::Backend;
use progress::Bar;
use scenarios::{efficiency, latency, scale, soak, throughput};

/// Clips, seconds each, frame size, jobs at a time.
const STANDARD_EFFICIENCY: (usize, u32, &str, usize) = (24, 10, "1280x720", 2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Under 2 minutes, a bit of everything (CI's smoke test).
    Quick,
    /// The full table: throughput with 1, 4, 16 workers, latency, 24-clip efficiency.
    Standard,
    /// 10,000 jobs through 16 workers.
    Stress,
    /// Only the 24-clip efficiency run of `standard` (about a minute).
    Efficiency,
    /// 1,000 simulated workers heartbeating at 1 Hz.
    Scale,
    /// Mixed real jobs for --duration, with pass criteria.
    Soak,
}

#[derive(Parser, Debug)]
#[command(
    name = "ffleet-load",
    version,
    about = "Load tests for an ffleet cluster on this machine"
)]
struct Args {
    #[arg(value_enum)]
    scenario: Scenario,
    /// A Postgres admin URL (e.g. from scripts/pg.sh): also run the
    /// throughput and latency scenarios on Postgres, and with two masters.
    #[arg(long, env = "FFLEET_LOAD_POSTGRES")]
    postgres: Option<String>,
    /// Where results and logs go.
    #[arg(long, default_value = "load-results")]
    out: PathBuf,
    /// Efficiency rounds (the `efficiency` scenario): the median counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Soak duration.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    duration: Duration,
}

struct Report {
    json: serde_json::Map<String, serde_json::Value>,
    markdown: Vec<String>,
}

impl Report {
    fn add(&mut self, key: &str, value: impl serde::Serialize) -> anyhow::Result<()> {
        self.json
            .insert(key.to_owned(), serde_json::to_value(value)?);
        Ok(())
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn throughput_table(runs: &[throughput::Run]) -> Vec<String> {
    let mut md = vec![
        "| backend | masters | workers | jobs | submissions/s | leases/s | lifecycles/s | master CPU s | master RSS MiB |".into(),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |".into(),
    ];
    for r in runs {
        md.push(format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
            r.backend,
            r.masters,
            r.workers,
            r.jobs,
            r.submissions_per_sec,
            r.leases_per_sec,
            r.lifecycles_per_sec,
            r.master_cpu_seconds,
            r.master_rss_bytes as f64 / 1048576.0
        ));
    }
    md.push(String::new());
    md.push(format!(
        "Target: >= 5,000 lifecycles/s ({} here, best {:.0}).",
        verdict(runs.iter().any(|r| r.lifecycles_per_sec >= 5000.0)),
        runs.iter()
            .map(|r| r.lifecycles_per_sec)
            .fold(0.0, f64::max)
    ));
    md
}

fn latency_table(runs: &[latency::Latency]) -> Vec<String> {
    let mut md = vec![
        "| backend | load | samples | p50 ms | p95 ms | p99 ms | max ms |".into(),
        "| --- | --- | --- | --- | --- | --- | --- |".into(),
    ];
    for r in runs {
        for (load, d) in [
            ("idle".to_owned(), &r.idle),
            (
                format!("{:.0} jobs/s", r.background_jobs_per_sec),
                &r.under_load,
            ),
        ] {
            md.push(format!(
                "| {} | {load} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.backend, d.samples, d.p50_ms, d.p95_ms, d.p99_ms, d.max_ms
            ));
        }
    }
    if let Some(r) = runs.first() {
        md.push(String::new());
        md.push(format!(
            "Target on an idle worker: p50 < 5 ms ({}), p99 < 25 ms ({}).",
            verdict(r.idle.p50_ms < 5.0),
            verdict(r.idle.p99_ms < 25.0)
        ));
    }
    md
}

async fn run(args: &Args, bar: &Bar) -> anyhow::Result<(Report, bool)> {
    let out = std::path::absolute(&args.out)?;
    let work = out.join("work");
    let clip_dir = out.join("clips");
    std::fs::create_dir_all(&work)?;
    let mut report = Report {
        json: Default::default(),
        markdown: vec![
            format!("# ffleet-load {:?}", args.scenario).to_lowercase(),
            String::new(),
        ],
    };
    let postgres = args.postgres.clone().map(Backend::Postgres);
    let mut passed = true;

    // (backend, masters, workers, jobs) throughput runs.
    let mut plan: Vec<(Backend, usize, usize, usize)> = vec![];
    let mut latency_samples = 0;
    let mut efficiency_plan = None;
    let mut efficiency_rounds = 1;
    let mut scale_plan = None;
    match args.scenario {
        Scenario::Quick => {
            plan.push((Backend::Sqlite, 1, 1, 300));
            plan.push((Backend::Sqlite, 1, 4, 300));
            if let Some(pg) = &postgres {
                plan.push((pg.clone(), 2, 4, 300));
            }
            latency_samples = 30;
            efficiency_plan = Some((4, 3, "640x360", 2));
            scale_plan = Some((100, Duration::from_secs(5)));
        }
        Scenario::Standard => {
            for workers in [1, 4, 16] {
                plan.push((Backend::Sqlite, 1, workers, 2000));
            }
            if let Some(pg) = &postgres {
                for workers in [1, 4, 16] {
                    plan.push((pg.clone(), 1, workers, 2000));
                }
                plan.push((pg.clone(), 2, 16, 2000));
            }
            latency_samples = 200;
            efficiency_plan = Some(STANDARD_EFFICIENCY);
        }
        Scenario::Stress => {
            plan.push((Backend::Sqlite, 1, 16, 10_000));
            if let Some(pg) = &postgres {
                plan.push((pg.clone(), 2, 16, 10_000));
            }
        }
        Scenario::Efficiency => {
            efficiency_plan = Some(STANDARD_EFFICIENCY);
            efficiency_rounds = args.rounds.max(1);
        }
        Scenario::Scale => scale_plan = Some((1000, Duration::from_secs(60))),
        Scenario::Soak => {
            let result = soak::run(&work, &clip_dir, args.duration, bar).await?;
            report.markdown.push(format!(
                "## Soak ({:.0} s)\n\n{} jobs: {} succeeded, {} failed, {} cancelled, {} lost.\n",
                result.seconds,
                result.submitted,
                result.succeeded,
                result.failed,
                result.cancelled,
                result.lost
            ));
            report
                .markdown
                .extend(result.verdicts.iter().map(|v| format!("- {v}")));
            passed = result.passed;
            report.add("soak", &result)?;
        }
    }

    if !plan.is_empty() {
        let mut runs = vec![];
        for (backend, masters, workers, jobs) in &plan {
            runs.push(throughput::run(&work, backend, *masters, *workers, *jobs, bar).await?);
        }
        report
            .markdown
            .push("## Throughput (no-op executor)\n".into());
        report.markdown.extend(throughput_table(&runs));
        report.markdown.push(String::new());
        report.add("throughput", &runs)?;
    }
    if latency_samples > 0 {
        let mut runs = vec![latency::run(&work, &Backend::Sqlite, latency_samples, bar).await?];
        if let Some(pg) = &postgres {
            runs.push(latency::run(&work, pg, latency_samples, bar).await?);
        }
        report
            .markdown
            .push("## Submit-to-start latency (no-op executor)\n".into());
        report.markdown.extend(latency_table(&runs));
        report.markdown.push(String::new());
        report.add("latency", &runs)?;
    }
    if let Some((n, seconds, size, parallelism)) = efficiency_plan {
        // The machine's speed drifts (shared cores): each round runs
        // directly and then through ffleet, back to back, and the median
        // round's ratio is the figure.
        let mut rounds = vec![];
        for _ in 0..efficiency_rounds {
            rounds.push(
                efficiency::run(
                    &work,
                    &clip_dir,
                    n,
                    seconds,
                    size,
                    "h264-480p",
                    parallelism,
                    bar,
                )
                .await?,
            );
        }
        let mut ratios: Vec<f64> = rounds.iter().map(|e| e.efficiency).collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let rows: Vec<String> = rounds
            .iter()
            .map(|e| {
                format!(
                    "| {:.2} s | {:.2} s | {:.3} | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
                    e.direct_seconds,
                    e.cluster_seconds,
                    e.efficiency,
                    e.queue_wait_ms,
                    e.start_ms,
                    e.run_ms,
                    e.worker_phases_ms
                        .iter()
                        .map(|(p, ms)| format!("{p} {ms:.1} ms"))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })
            .collect();
        report.markdown.push(format!(
            "## Efficiency\n\n{n} clips of {seconds} s {size} to h264-480p, {parallelism} at a time, \
             {efficiency_rounds} round(s).\n\n\
             | ffmpeg directly | through ffleet | efficiency | queue wait | lease to start | run | \
             the worker's phases per job (mean) |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n{}\n\n\
             Median efficiency {median:.3}. Target: efficiency >= 0.97 ({}).\n",
            rows.join("\n"),
            verdict(median >= 0.97)
        ));
        report.add("efficiency", &rounds)?;
    }
    if let Some((workers, duration)) = scale_plan {
        let s = scale::run(&work, &Backend::Sqlite, workers, duration, bar).await?;
        report.markdown.push(format!(
            "## Scale\n\n{} simulated workers at 1 Hz for {:.0} s: {} heartbeats, {} failed; \
             master CPU {:.3} cores, RSS {:.0} MiB.\n",
            s.workers,
            s.seconds,
            s.heartbeats,
            s.heartbeat_failures,
            s.master_cpu_cores,
            s.master_rss_bytes as f64 / 1048576.0
        ));
        report.add("scale", &s)?;
    }
    Ok((report, passed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bar = Bar::default();
    let (report, passed) = run(&args, &bar).await?;
    let name = format!("{:?}", args.scenario).to_lowercase();
    std::fs::create_dir_all(&args.out)?;
    let mut json = serde_json::Value::Object(report.json);
    json["scenario"] = json!(name);
    std::fs::write(
        args.out.join(format!("{name}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    let markdown = report.markdown.join("\n");
    std::fs::write(args.out.join(format!("{name}.md")), &markdown)?;
    println!("{markdown}");
    if !passed {
        anyhow::bail!("{name}: pass criteria not met");
    }
    Ok(())
}
