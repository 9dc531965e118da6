//! http inputs: downloaded by the worker, capped in size. The server is a
//! few lines of HTTP/1.1 on 127.0.0.1 inside the test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ffleet_core::JobState;
use ffleet_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::*;

/// Serves `files` by path; anything else is a 404. Stops when dropped.
struct FileServer {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(files: HashMap<&'static str, PathBuf>) -> anyhow::Result<FileServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let files = Arc::new(files);
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let Ok(n) = socket.read(&mut buf).await else {
                    return;
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let response = match files.get(path.as_str()).map(std::fs::read) {
                    Some(Ok(body)) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend(body);
                        r
                    }
                    _ => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(FileServer { addr, task })
}

#[tokio::test]
async fn http_inputs_are_downloaded_and_oversized_ones_fail_cleanly() -> anyhow::Result<()> {
    let small = clip(1, "160x120");
    let big = clip(5, "640x360");
    let small_len = std::fs::metadata(&small)?.len();
    let big_len = std::fs::metadata(&big)?.len();
    let cap = (small_len + big_len) / 2;
    assert!(
        small_len < cap && cap < big_len,
        "clip sizes {small_len} and {big_len} straddle the cap"
    );

    let server = serve(HashMap::from([
        ("/small.mp4", small.clone()),
        ("/big.mp4", big),
    ]))
    .await?;
    let mut cluster = Cluster::start(MasterConfig::default()).await?;
    let cap_arg = cap.to_string();
    cluster
        .spawn_worker("w1", &["--max-download", &cap_arg])
        .await?;
    let mut client = cluster.client().await?;
    let url = |path: &str| format!("http://{}{path}", server.addr);

    let mut s = spec(&small, "from-http.mp4", "h264-480p");
    s.input = url("/small.mp4");
    let job = submit(&mut client, s).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(
        state_of(&done),
        JobState::Succeeded,
        "{done:?}\n{}",
        cluster.logs()
    );
    assert_eq!(done.bandwidth.unwrap().input_bytes, small_len);
    assert_eq!(
        probe_video(&cluster.master.output_root.join("from-http.mp4")).1,
        480
    );

    let mut s = spec(&small, "too-big.mp4", "h264-480p");
    s.input = url("/big.mp4");
    let job = submit(&mut client, s).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!((state_of(&done), done.attempt), (JobState::Failed, 1));
    let failure = done.failure.unwrap();
    assert_eq!(failure.kind, v1::FailureKind::Input as i32);
    assert!(
        failure.reason.contains("download cap"),
        "{}",
        failure.reason
    );
    assert!(!cluster.master.output_root.join("too-big.mp4").exists());

    let mut s = spec(&small, "missing.mp4", "h264-480p");
    s.input = url("/nope.mp4");
    let job = submit(&mut client, s).await?;
    let done = wait_final(&mut client, &job.id, Duration::from_secs(60)).await?;
    assert_eq!(state_of(&done), JobState::Failed);
    assert!(done.failure.unwrap().reason.contains("404"));

    // Every job's scratch space is gone, downloads included.
    let scratch: Vec<_> = std::fs::read_dir(cluster.workers[0].work_dir.join("jobs"))?.collect();
    assert!(scratch.is_empty());
    Ok(())
}
