//! Each validation rule refuses its bad input with INVALID_ARGUMENT and a
//! message naming the field; nothing is stored.

use ffleet_proto::v1;

use crate::helpers::*;

#[tokio::test]
async fn each_rule_names_its_field() -> anyhow::Result<()> {
    let cluster = Cluster::start(MasterConfig {
        extra: vec!["--input-root".into(), "/srv/media".into()],
        ..MasterConfig::default()
    })
    .await?;
    let mut client = cluster.client().await?;
    let good = || v1::JobSpec {
        input: "/srv/media/a.mp4".into(),
        output: "a.mp4".into(),
        preset: "h264-480p".into(),
        ..Default::default()
    };
    let resources = |cpu, memory, disk| {
        Some(v1::Resources {
            cpu_millis: cpu,
            memory_bytes: memory,
            disk_bytes: disk,
        })
    };
    let overrides = |o: v1::Overrides| Some(o);
    let cases: Vec<(&str, v1::JobSpec)> = vec![
        (
            "input",
            v1::JobSpec {
                input: "".into(),
                ..good()
            },
        ),
        (
            "input",
            v1::JobSpec {
                input: "concat:/srv/media/a.mp4|/etc/passwd".into(),
                ..good()
            },
        ),
        (
            "input",
            v1::JobSpec {
                input: "pipe:0".into(),
                ..good()
            },
        ),
        (
            "input",
            v1::JobSpec {
                input: "file:///srv/media/a.mp4".into(),
                ..good()
            },
        ),
        (
            "input",
            v1::JobSpec {
                input: "data:text/plain,hello".into(),
                ..good()
            },
        ),
        (
            "input",
            v1::JobSpec {
                input: "/etc/passwd".into(),
                ..good()
            },
        ),
        (
            "input",
            v1::JobSpec {
                input: "/srv/media/../../etc/passwd".into(),
                ..good()
            },
        ),
        (
            "preset",
            v1::JobSpec {
                preset: "h265-8k".into(),
                ..good()
            },
        ),
        (
            "preset",
            v1::JobSpec {
                preset: "".into(),
                ..good()
            },
        ),
        (
            "output",
            v1::JobSpec {
                output: "../../etc/cron.d/evil".into(),
                ..good()
            },
        ),
        (
            "output",
            v1::JobSpec {
                output: "/etc/evil.mp4".into(),
                ..good()
            },
        ),
        (
            "output",
            v1::JobSpec {
                output: "".into(),
                ..good()
            },
        ),
        (
            "resources.cpu",
            v1::JobSpec {
                resources: resources(0, 1 << 20, 1 << 20),
                ..good()
            },
        ),
        (
            "resources.memory",
            v1::JobSpec {
                resources: resources(1000, 0, 1 << 20),
                ..good()
            },
        ),
        (
            "resources.disk",
            v1::JobSpec {
                resources: resources(1000, 1 << 20, 0),
                ..good()
            },
        ),
        (
            "overrides.crf",
            v1::JobSpec {
                overrides: overrides(v1::Overrides {
                    crf: Some(99),
                    ..Default::default()
                }),
                ..good()
            },
        ),
        (
            "overrides.container",
            v1::JobSpec {
                overrides: overrides(v1::Overrides {
                    container: Some("avi".into()),
                    ..Default::default()
                }),
                ..good()
            },
        ),
    ];
    for (field, spec) in cases {
        let shown = format!("{spec:?}");
        let err = client
            .submit_job(v1::SubmitJobRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
            })
            .await
            .expect_err(&format!("accepted {shown}"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{shown}");
        assert!(
            err.message().contains(&format!("{field}:")),
            "message {:?} does not name {field} for {shown}",
            err.message()
        );
    }
    let missing = client
        .submit_job(v1::SubmitJobRequest {
            spec: None,
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert!(missing.message().contains("spec"));
    // Nothing was stored.
    let listed = client
        .list_jobs(v1::ListJobsRequest::default())
        .await?
        .into_inner();
    assert!(listed.jobs.is_empty());
    // And the good spec is accepted.
    client
        .submit_job(v1::SubmitJobRequest {
            spec: Some(good()),
            idempotency_key: String::new(),
        })
        .await?;
    Ok(())
}
