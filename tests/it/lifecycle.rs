//! The main path: submit, lease, transcode, report.

use std::collections::BTreeSet;
use std::time::Duration;

use ffleet_core::JobState;
use ffleet_proto::convert::job_state_from_wire;
use ffleet_proto::v1;

use crate::helpers::*;

#[tokio::test]
async fn a_clip_is_transcoded_to_h264_480p_with_history_and_bandwidth() -> anyhow::Result<()> {
    let (cluster, mut client) = Cluster::with_worker().await?;
    let input = clip(5, "320x240");

    let job = submit(&mut client, spec(&input, "e2e/out.mp4", "h264-480p")).await?;
    assert_eq!(state_of(&job), JobState::Queued);
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(
        state_of(&done),
        JobState::Succeeded,
        "{done:?}\n{}",
        cluster.logs()
    );

    let output = cluster.master.output_root.join("e2e/out.mp4");
    assert_eq!(probe_video(&output), ("h264".to_owned(), 480));
    // Nothing left beside it: the temporary file was renamed into place.
    let siblings: Vec<_> = std::fs::read_dir(output.parent().unwrap())?
        .flatten()
        .collect();
    assert_eq!(siblings.len(), 1, "{siblings:?}");

    let full = client
        .get_job(v1::GetJobRequest { id: job.id.clone() })
        .await?
        .into_inner();
    let visited: Vec<JobState> = full
        .history
        .iter()
        .map(|t| job_state_from_wire(t.to).unwrap())
        .collect();
    assert_eq!(
        visited,
        [
            JobState::Queued,
            JobState::Leased,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    assert!(full.history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));

    let b = full.bandwidth.expect("bandwidth recorded");
    assert_eq!(b.input_bytes, std::fs::metadata(&input)?.len());
    assert_eq!(b.output_bytes, std::fs::metadata(&output)?.len());
    assert!(
        (4_500_000..=5_500_000).contains(&b.media_duration_us),
        "{b:?}"
    );
    assert!(b.wall_time_ms > 0 && b.speed > 0.0);
    let expected_bitrate = b.output_bytes * 8 * 1_000_000 / b.media_duration_us;
    assert!(b.avg_bitrate_bps.abs_diff(expected_bitrate) <= 1, "{b:?}");
    assert_eq!(
        b.write_bytes_per_sec,
        b.output_bytes * 1000 / b.wall_time_ms
    );
    assert_eq!(b.read_bytes_per_sec, b.input_bytes * 1000 / b.wall_time_ms);
    // The worker's scratch dir for the job is gone.
    let scratch: Vec<_> = std::fs::read_dir(cluster.workers[0].work_dir.join("jobs"))?.collect();
    assert!(scratch.is_empty());
    Ok(())
}

#[tokio::test]
async fn ten_jobs_on_two_workers_each_run_exactly_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    cluster.spawn_worker("w1", &[]).await?;
    cluster.spawn_worker("w2", &[]).await?;
    let mut client = cluster.client().await?;
    let input = clip(1, "160x120");
    let mut ids = vec![];
    for i in 0..10 {
        let mut s = spec(&input, &format!("many/{i}.mp4"), "h264-480p");
        s.resources = Some(v1::Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            disk_bytes: 1 << 30,
        });
        ids.push(submit(&mut client, s).await?.id);
    }
    let store = cluster.store().await?;
    let mut workers_used = BTreeSet::new();
    for id in &ids {
        let done = wait_final(&mut client, id, Duration::from_secs(120)).await?;
        assert_eq!(
            state_of(&done),
            JobState::Succeeded,
            "{done:?}\n{}",
            cluster.logs()
        );
        assert_eq!(done.attempt, 1);
        let leases = ffleet_master::store::Store::lease_history(&store, id).await?;
        assert_eq!(
            leases.len(),
            1,
            "job {id} leased more than once: {leases:?}"
        );
        workers_used.insert(leases[0].1.clone());
        let successes = done
            .history
            .iter()
            .filter(|t| job_state_from_wire(t.to) == Some(JobState::Succeeded))
            .count();
        assert_eq!(successes, 1);
    }
    let outputs = std::fs::read_dir(cluster.master.output_root.join("many"))?.count();
    assert_eq!(outputs, 10);
    assert_eq!(workers_used.len(), 2, "both workers took jobs");
    Ok(())
}

#[tokio::test]
async fn resubmitting_an_idempotency_key_returns_the_same_job() -> anyhow::Result<()> {
    let cluster = Cluster::start(MasterConfig::default()).await?;
    let mut client = cluster.client().await?;
    let input = clip(1, "160x120");
    let request = |output: &str| v1::SubmitJobRequest {
        spec: Some(spec(&input, output, "h264-480p")),
        idempotency_key: "upload-42".into(),
    };
    let first = client.submit_job(request("idem.mp4")).await?.into_inner();
    let second = client.submit_job(request("idem.mp4")).await?.into_inner();
    assert_eq!(first.id, second.id);
    let listed = client
        .list_jobs(v1::ListJobsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    // The same key for a different spec is refused, not silently merged.
    let err = client.submit_job(request("other.mp4")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    Ok(())
}

#[tokio::test]
async fn list_filters_by_state_and_pages() -> anyhow::Result<()> {
    let cluster = Cluster::start(MasterConfig::default()).await?;
    let mut client = cluster.client().await?;
    let input = clip(1, "160x120");
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            submit(&mut client, spec(&input, &format!("p/{i}.mp4"), "aac"))
                .await?
                .id,
        );
    }
    client
        .cancel_job(v1::CancelJobRequest { id: ids[0].clone() })
        .await?;
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(v1::ListJobsRequest {
                state: v1::JobState::Queued as i32,
                page_size: 2,
                page_token: token,
            })
            .await?
            .into_inner();
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = ids[1..].to_vec();
    expected.reverse();
    assert_eq!(seen, expected, "queued jobs, newest first, across pages");
    Ok(())
}
