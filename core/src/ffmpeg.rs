//! FFmpeg as data: the argument vector built from a spec (never a shell
//! string), the `-progress` stream parser, and the policy applied to an
//! ffprobe report.

use crate::spec::{Container, JobSpec, Preset, VideoCodec};

/// Largest frame FFmpeg may decode (`-max_pixels`): 8K.
pub const MAX_PIXELS: u64 = 7680 * 4320;
/// Largest number of streams an input may carry.
pub const MAX_STREAMS: usize = 32;
/// Demuxers that read other files or URLs named inside the input: refused.
pub const REFUSED_FORMATS: [&str; 4] = ["hls", "concat", "ffconcat", "dash"];

/// The FFmpeg arguments (without the program name) that transcode `input`
/// (a local file) into `output` (a local file) as `spec` asks, writing
/// progress to stdout.
pub fn build_args(spec: &JobSpec, input: &str, output: &str) -> Vec<String> {
    let threads = spec.resources.cpu_millis.div_ceil(1000).max(1).to_string();
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-progress",
        "pipe:1",
        "-y",
        // Input options: only plain files, only sane frame sizes.
        "-protocol_whitelist",
        "file",
        "-max_pixels",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(MAX_PIXELS.to_string());
    args.extend(["-threads".into(), threads.clone()]);
    args.extend(["-i".into(), format!("file:{input}")]);

    let o = &spec.overrides;
    match spec.preset.video_codec() {
        Some(codec) => {
            let height = o.height.or(spec.preset.height()).unwrap_or(480);
            args.extend([
                "-map".into(),
                "0:v:0".into(),
                "-map".into(),
                "0:a:0?".into(),
            ]);
            args.extend(["-vf".into(), format!("scale=-2:{height}")]);
            match codec {
                VideoCodec::H264 => {
                    args.extend(["-c:v", "libx264", "-preset", "veryfast"].map(String::from));
                }
                VideoCodec::Hevc => {
                    args.extend(["-c:v", "libx265", "-preset", "fast"].map(String::from));
                    // x265 sizes its own thread pools from the host: pin them.
                    args.extend([
                        "-x265-params".into(),
                        format!("log-level=error:pools={threads}"),
                    ]);
                    if matches!(spec.container(), Container::Mp4 | Container::Mov) {
                        args.extend(["-tag:v".into(), "hvc1".into()]);
                    }
                }
            }
            match (o.video_bitrate, o.crf.or(spec.preset.default_crf())) {
                (Some(bps), _) => args.extend(["-b:v".into(), bps.to_string()]),
                (None, Some(crf)) => args.extend(["-crf".into(), crf.to_string()]),
                (None, None) => {}
            }
            args.extend(["-pix_fmt".into(), "yuv420p".into()]);
            push_audio(&mut args, spec);
        }
        None if spec.preset == Preset::Aac => {
            args.extend(["-map".into(), "0:a:0".into(), "-vn".into()]);
            push_audio(&mut args, spec);
        }
        None => {
            args.extend(["-map", "0", "-c", "copy"].map(String::from));
        }
    }
    args.extend(["-threads".into(), threads]);
    let container = spec.container();
    if matches!(container, Container::Mp4 | Container::Mov | Container::M4a) {
        args.extend(["-movflags".into(), "+faststart".into()]);
    }
    args.extend(["-f".into(), container.muxer().into()]);
    args.push(format!("file:{output}"));
    args
}

fn push_audio(args: &mut Vec<String>, spec: &JobSpec) {
    let bps = spec.overrides.audio_bitrate.unwrap_or(128_000);
    args.extend(["-c:a".into(), "aac".into(), "-b:a".into(), bps.to_string()]);
}

/// The arguments for a time-limited ffprobe of a local file, JSON out.
pub fn probe_args(input: &str) -> Vec<String> {
    [
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("file:{input}")])
    .collect()
}

/// One `-progress` block, as FFmpeg reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressSample {
    pub frame: u64,
    pub fps: f64,
    pub bitrate_bps: u64,
    pub total_size: u64,
    pub out_time_us: u64,
    pub speed: f64,
    /// `progress=end`: FFmpeg finished writing.
    pub end: bool,
}

/// Accumulates `key=value` lines; yields a sample at each `progress=` line.
#[derive(Debug, Default)]
pub struct ProgressParser {
    current: ProgressSample,
}

impl ProgressParser {
    pub fn feed(&mut self, line: &str) -> Option<ProgressSample> {
        let (key, value) = line.trim().split_once('=')?;
        let value = value.trim();
        match key {
            "frame" => self.current.frame = value.parse().unwrap_or(self.current.frame),
            "fps" => self.current.fps = value.parse().unwrap_or(self.current.fps),
            "bitrate" => {
                if let Some(kbits) = value.strip_suffix("kbits/s")
                    && let Ok(k) = kbits.trim().parse::<f64>()
                {
                    self.current.bitrate_bps = (k * 1000.0).round() as u64;
                }
            }
            "total_size" => {
                self.current.total_size = value.parse().unwrap_or(self.current.total_size)
            }
            // FFmpeg's out_time_ms is microseconds too (a long-standing
            // misnomer); prefer out_time_us when both are present.
            "out_time_us" | "out_time_ms" => {
                if let Ok(us) = value.parse::<i64>() {
                    self.current.out_time_us = us.max(0) as u64;
                }
            }
            "speed" => {
                if let Some(x) = value.strip_suffix('x')
                    && let Ok(s) = x.trim().parse::<f64>()
                {
                    self.current.speed = s;
                }
            }
            "progress" => {
                self.current.end = value == "end";
                return Some(self.current.clone());
            }
            _ => {}
        }
        None
    }
}

/// What ffprobe said about an input, reduced to what the policy checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeSummary {
    pub format_name: String,
    pub duration_us: Option<u64>,
    pub streams: Vec<ProbeStream>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeStream {
    pub codec_type: String,
    pub width: u64,
    pub height: u64,
}

/// Refuses inputs that would make FFmpeg read other files (playlists,
/// concat lists), absurd frame sizes, and absurd stream counts; and inputs
/// lacking what the preset needs.
pub fn check_probe(summary: &ProbeSummary, preset: Preset) -> Result<(), String> {
    for name in summary.format_name.split(',') {
        if REFUSED_FORMATS.contains(&name.trim()) {
            return Err(format!(
                "input format {name:?} is refused: it reads other files or URLs"
            ));
        }
    }
    if summary.streams.len() > MAX_STREAMS {
        return Err(format!(
            "input has {} streams; at most {MAX_STREAMS} are accepted",
            summary.streams.len()
        ));
    }
    for s in &summary.streams {
        if s.width.saturating_mul(s.height) > MAX_PIXELS {
            return Err(format!(
                "input frame {}x{} exceeds the {MAX_PIXELS}-pixel limit",
                s.width, s.height
            ));
        }
    }
    let has = |kind: &str| summary.streams.iter().any(|s| s.codec_type == kind);
    if preset.video_codec().is_some() && !has("video") {
        return Err(format!(
            "preset {} needs a video stream; the input has none",
            preset.name()
        ));
    }
    if preset == Preset::Aac && !has("audio") {
        return Err("preset aac needs an audio stream; the input has none".into());
    }
    if summary.streams.is_empty() {
        return Err("input has no streams".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{SpecPolicy, SubmittedSpec, validate};
    use std::path::PathBuf;

    fn spec(preset: &str) -> JobSpec {
        validate(
            SubmittedSpec {
                input: "/in/a.mp4".into(),
                output: "b.mp4".into(),
                preset: preset.into(),
                ..SubmittedSpec::default()
            },
            &SpecPolicy::new(PathBuf::from("/out")),
        )
        .unwrap()
    }

    #[test]
    fn h264_args_pin_protocols_threads_and_muxer() {
        let args = build_args(&spec("h264-480p"), "/in/a.mp4", "/out/.b.mp4.tmp");
        let joined = args.join(" ");
        assert!(joined.contains("-nostdin"));
        assert!(joined.contains("-progress pipe:1"));
        assert!(joined.contains("-protocol_whitelist file"));
        assert!(joined.contains("-i file:/in/a.mp4"));
        assert!(joined.contains("-c:v libx264"));
        assert!(joined.contains("scale=-2:480"));
        assert!(joined.contains("-crf 23"));
        assert!(joined.contains("-threads 1"));
        assert!(joined.ends_with("-f mp4 file:/out/.b.mp4.tmp"));
        // The whitelist must precede -i to apply to the input.
        let wl = args
            .iter()
            .position(|a| a == "-protocol_whitelist")
            .unwrap();
        let i = args.iter().position(|a| a == "-i").unwrap();
        assert!(wl < i);
    }

    #[test]
    fn presets_choose_their_codecs() {
        let hevc = build_args(&spec("hevc-1080p"), "/a", "/b").join(" ");
        assert!(hevc.contains("libx265") && hevc.contains("pools=2") && hevc.contains("hvc1"));
        let aac = build_args(&spec("aac"), "/a", "/b").join(" ");
        assert!(aac.contains("-vn") && aac.contains("-c:a aac") && aac.contains("-f ipod"));
        let remux = build_args(&spec("remux"), "/a", "/b").join(" ");
        assert!(remux.contains("-c copy") && remux.contains("-f matroska"));
    }

    #[test]
    fn progress_blocks_become_samples() {
        let mut p = ProgressParser::default();
        let text = "frame=120\nfps=60.5\nbitrate= 812.3kbits/s\ntotal_size=524336\n\
                    out_time_us=4000000\nout_time_ms=4000000\nspeed=2.01x\nprogress=continue\n\
                    frame=150\nbitrate=N/A\nspeed=N/A\nout_time_us=5000000\nprogress=end\n";
        let samples: Vec<_> = text.lines().filter_map(|l| p.feed(l)).collect();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].frame, 120);
        assert_eq!(samples[0].fps, 60.5);
        assert_eq!(samples[0].bitrate_bps, 812_300);
        assert_eq!(samples[0].total_size, 524_336);
        assert_eq!(samples[0].out_time_us, 4_000_000);
        assert_eq!(samples[0].speed, 2.01);
        assert!(!samples[0].end);
        // N/A keeps the last known value.
        assert_eq!((samples[1].bitrate_bps, samples[1].speed), (812_300, 2.01));
        assert_eq!(samples[1].out_time_us, 5_000_000);
        assert!(samples[1].end);
    }

    #[test]
    fn probe_policy_refuses_playlists_huge_frames_and_missing_streams() {
        let video = ProbeStream {
            codec_type: "video".into(),
            width: 320,
            height: 240,
        };
        let ok = ProbeSummary {
            format_name: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration_us: Some(1),
            streams: vec![video.clone()],
        };
        assert_eq!(check_probe(&ok, Preset::H264_480p), Ok(()));
        let hls = ProbeSummary {
            format_name: "hls".into(),
            ..ok.clone()
        };
        assert!(
            check_probe(&hls, Preset::H264_480p)
                .unwrap_err()
                .contains("hls")
        );
        let concat = ProbeSummary {
            format_name: "concat".into(),
            ..ok.clone()
        };
        assert!(check_probe(&concat, Preset::Remux).is_err());
        let huge = ProbeSummary {
            streams: vec![ProbeStream {
                width: 100_000,
                height: 100_000,
                ..video.clone()
            }],
            ..ok.clone()
        };
        assert!(
            check_probe(&huge, Preset::H264_480p)
                .unwrap_err()
                .contains("pixel")
        );
        let many = ProbeSummary {
            streams: vec![video; 40],
            ..ok.clone()
        };
        assert!(
            check_probe(&many, Preset::Remux)
                .unwrap_err()
                .contains("streams")
        );
        assert!(check_probe(&ok, Preset::Aac).unwrap_err().contains("audio"));
    }
}
