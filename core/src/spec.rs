//! The job spec: what to transcode, how, and with what resources. A spec
//! arrives as a [`SubmittedSpec`] (raw, from the wire) and leaves
//! [`validate`] as a [`JobSpec`] with every default applied, or as an
//! [`InvalidSpec`] naming the offending field.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::resources::Resources;

/// The encoding recipes ffleet knows. Names are stable: scripts rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Preset {
    #[serde(rename = "h264-480p")]
    H264_480p,
    #[serde(rename = "h264-720p")]
    H264_720p,
    #[serde(rename = "h264-1080p")]
    H264_1080p,
    #[serde(rename = "hevc-1080p")]
    Hevc1080p,
    #[serde(rename = "aac")]
    Aac,
    #[serde(rename = "remux")]
    Remux,
}

/// What a preset does to the video stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Hevc,
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

impl Preset {
    pub const ALL: [Preset; 6] = [
        Preset::H264_480p,
        Preset::H264_720p,
        Preset::H264_1080p,
        Preset::Hevc1080p,
        Preset::Aac,
        Preset::Remux,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::H264_480p => "h264-480p",
            Preset::H264_720p => "h264-720p",
            Preset::H264_1080p => "h264-1080p",
            Preset::Hevc1080p => "hevc-1080p",
            Preset::Aac => "aac",
            Preset::Remux => "remux",
        }
    }

    pub fn parse(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The video codec this preset encodes to; `None` for audio-only and for
    /// stream copy.
    pub fn video_codec(self) -> Option<VideoCodec> {
        match self {
            Preset::H264_480p | Preset::H264_720p | Preset::H264_1080p => Some(VideoCodec::H264),
            Preset::Hevc1080p => Some(VideoCodec::Hevc),
            Preset::Aac | Preset::Remux => None,
        }
    }

    pub fn height(self) -> Option<u32> {
        match self {
            Preset::H264_480p => Some(480),
            Preset::H264_720p => Some(720),
            Preset::H264_1080p | Preset::Hevc1080p => Some(1080),
            Preset::Aac | Preset::Remux => None,
        }
    }

    pub fn default_crf(self) -> Option<u32> {
        match self.video_codec()? {
            VideoCodec::H264 => Some(23),
            VideoCodec::Hevc => Some(28),
        }
    }

    /// Whether the preset re-encodes audio (and so takes an audio bitrate).
    pub fn encodes_audio(self) -> bool {
        self != Preset::Remux
    }

    pub fn default_container(self) -> Container {
        match self {
            Preset::Aac => Container::M4a,
            Preset::Remux => Container::Mkv,
            _ => Container::Mp4,
        }
    }

    /// What a job of this preset reserves when it does not say.
    pub fn default_resources(self) -> Resources {
        match self {
            Preset::H264_480p => Resources::new(1000, 512 * MIB, 2 * GIB),
            Preset::H264_720p => Resources::new(1500, 768 * MIB, 4 * GIB),
            Preset::H264_1080p => Resources::new(2000, GIB, 8 * GIB),
            Preset::Hevc1080p => Resources::new(2000, 2 * GIB, 8 * GIB),
            Preset::Aac => Resources::new(250, 256 * MIB, GIB),
            Preset::Remux => Resources::new(250, 256 * MIB, 8 * GIB),
        }
    }

    fn allows(self, container: Container) -> bool {
        match self {
            Preset::Aac => container != Container::Webm,
            Preset::Remux => true,
            _ => !matches!(container, Container::Webm | Container::M4a),
        }
    }
}

/// Output containers, by the name users give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    Mp4,
    Mkv,
    Mov,
    Webm,
    M4a,
    Ts,
}

impl Container {
    pub const ALL: [Container; 6] = [
        Container::Mp4,
        Container::Mkv,
        Container::Mov,
        Container::Webm,
        Container::M4a,
        Container::Ts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Mkv => "mkv",
            Container::Mov => "mov",
            Container::Webm => "webm",
            Container::M4a => "m4a",
            Container::Ts => "ts",
        }
    }

    pub fn parse(name: &str) -> Option<Container> {
        let name = name.to_ascii_lowercase();
        Container::ALL.into_iter().find(|c| c.name() == name)
    }

    /// FFmpeg's muxer for this container. Always given with `-f`, because
    /// the worker writes to a temporary name whose extension says nothing.
    pub fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Mkv => "matroska",
            Container::Mov => "mov",
            Container::Webm => "webm",
            Container::M4a => "ipod",
            Container::Ts => "mpegts",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crf: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_bitrate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_bitrate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

/// A validated job spec with every default applied. The master stores it; the
/// worker builds FFmpeg's argument vector from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// An absolute local path or an http/https URL.
    pub input: String,
    /// The absolute output path, inside the master's output root.
    pub output: String,
    pub preset: Preset,
    #[serde(default)]
    pub overrides: Overrides,
    pub resources: Resources,
    pub timeout_ms: u64,
    /// How long FFmpeg gets between SIGTERM and SIGKILL when the job is
    /// cancelled or times out. Specs stored before it existed get the
    /// default.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    pub priority: i32,
    pub max_attempts: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The grace period of a job that does not name one.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// The longest grace period a job may ask for; workers may cap it lower.
pub const MAX_GRACE_MS: u64 = 10 * 60 * 1000;

fn default_grace_ms() -> u64 {
    DEFAULT_GRACE_MS
}

impl JobSpec {
    pub fn container(&self) -> Container {
        self.overrides
            .container
            .unwrap_or_else(|| self.preset.default_container())
    }

    pub fn input_source(&self) -> InputSource {
        // A stored spec was validated on the way in; this cannot fail for it.
        classify_input(&self.input).unwrap_or(InputSource::Local(PathBuf::from(&self.input)))
    }
}

/// Where a job's input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    Local(PathBuf),
    Http(String),
}

/// A spec as a client sent it: strings not yet parsed, zeros meaning
/// "default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmittedSpec {
    pub input: String,
    pub output: String,
    pub preset: String,
    pub crf: Option<u32>,
    pub video_bitrate: Option<u64>,
    pub height: Option<u32>,
    pub audio_bitrate: Option<u64>,
    pub container: Option<String>,
    pub resources: Option<Resources>,
    pub timeout_ms: u64,
    pub grace_ms: u64,
    pub priority: i32,
    pub max_attempts: u32,
    pub labels: BTreeMap<String, String>,
}

/// The master's rules for what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecPolicy {
    /// Outputs must land inside this directory (absolute).
    pub output_root: PathBuf,
    /// When non-empty, local inputs must lie inside one of these.
    pub input_roots: Vec<PathBuf>,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_max_attempts: u32,
}

impl SpecPolicy {
    pub fn new(output_root: PathBuf) -> Self {
        SpecPolicy {
            output_root,
            input_roots: Vec::new(),
            default_timeout_ms: 60 * 60 * 1000,
            max_timeout_ms: 7 * 24 * 60 * 60 * 1000,
            default_max_attempts: 3,
        }
    }
}

/// A rejected spec: `field` is the name a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field,
        message: message.into(),
    }
}

const MAX_CPU_MILLIS: u32 = 256_000;
const MAX_ATTEMPTS: u32 = 100;
const MAX_LABELS: usize = 32;

/// Checks a submitted spec against the policy and fills in defaults.
pub fn validate(raw: SubmittedSpec, policy: &SpecPolicy) -> Result<JobSpec, InvalidSpec> {
    let input = validate_input(&raw.input, policy)?;
    let preset = if raw.preset.is_empty() {
        return Err(invalid(
            "preset",
            "required; one of ".to_owned() + &preset_names(),
        ));
    } else {
        Preset::parse(&raw.preset).ok_or_else(|| {
            invalid(
                "preset",
                format!("unknown preset {:?}; one of {}", raw.preset, preset_names()),
            )
        })?
    };
    let output = validate_output(&raw.output, policy)?;
    if let InputSource::Local(path) = &input
        && *path == output
    {
        return Err(invalid("output", "must differ from the input"));
    }
    let overrides = validate_overrides(&raw, preset)?;
    let resources = match raw.resources {
        None => preset.default_resources(),
        Some(r) => {
            if let Some(axis) = r.zero_axis() {
                let field = match axis {
                    "cpu" => "resources.cpu",
                    "memory" => "resources.memory",
                    _ => "resources.disk",
                };
                return Err(invalid(field, "must be positive"));
            }
            if r.cpu_millis > MAX_CPU_MILLIS {
                return Err(invalid("resources.cpu", "at most 256 cores"));
            }
            r
        }
    };
    let timeout_ms = match raw.timeout_ms {
        0 => policy.default_timeout_ms,
        t if t > policy.max_timeout_ms => {
            return Err(invalid(
                "timeout",
                format!("at most {} s", policy.max_timeout_ms / 1000),
            ));
        }
        t => t,
    };
    let grace_ms = match raw.grace_ms {
        0 => DEFAULT_GRACE_MS,
        g if g > MAX_GRACE_MS => {
            return Err(invalid(
                "grace",
                format!("at most {} s", MAX_GRACE_MS / 1000),
            ));
        }
        g => g,
    };
    let max_attempts = match raw.max_attempts {
        0 => policy.default_max_attempts,
        n if n > MAX_ATTEMPTS => {
            return Err(invalid("max_attempts", format!("at most {MAX_ATTEMPTS}")));
        }
        n => n,
    };
    validate_labels(&raw.labels)?;
    Ok(JobSpec {
        input: match input {
            InputSource::Local(p) => p.to_string_lossy().into_owned(),
            InputSource::Http(url) => url,
        },
        output: output.to_string_lossy().into_owned(),
        preset,
        overrides,
        resources,
        timeout_ms,
        grace_ms,
        priority: raw.priority,
        max_attempts,
        labels: raw.labels,
    })
}

fn preset_names() -> String {
    Preset::ALL.map(Preset::name).join(", ")
}

/// Classifies an input string. Only absolute local paths and http/https URLs
/// pass: every other scheme FFmpeg understands (`concat:`, `pipe:`, `file:`,
/// `data:`, `subfile:` …) could steer it outside the job.
pub fn classify_input(input: &str) -> Result<InputSource, String> {
    let lower = input.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let rest = &input[input.find("://").map_or(0, |i| i + 3)..];
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err("URL has no host".into());
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("URL contains whitespace or control characters".into());
        }
        return Ok(InputSource::Http(input.to_owned()));
    }
    if let Some(scheme) = scheme_prefix(input) {
        return Err(format!(
            "scheme {scheme:?} is not allowed; give an absolute path or an http/https URL"
        ));
    }
    let path = Path::new(input);
    if !path.is_absolute() {
        return Err("must be an absolute path or an http/https URL".into());
    }
    if input.chars().any(|c| c.is_control()) {
        return Err("path contains control characters".into());
    }
    Ok(InputSource::Local(normalize(path)))
}

/// `Some("concat")` for `concat:a|b`: a URL-scheme-like prefix before any `/`.
fn scheme_prefix(input: &str) -> Option<&str> {
    let colon = input.find(':')?;
    let head = &input[..colon];
    let mut chars = head.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_')))
    .then_some(head)
}

fn validate_input(input: &str, policy: &SpecPolicy) -> Result<InputSource, InvalidSpec> {
    if input.trim().is_empty() {
        return Err(invalid("input", "required"));
    }
    let source = classify_input(input).map_err(|m| invalid("input", m))?;
    if let InputSource::Local(path) = &source
        && !policy.input_roots.is_empty()
        && !policy
            .input_roots
            .iter()
            .any(|root| path.starts_with(normalize(root)))
    {
        return Err(invalid(
            "input",
            format!(
                "{} is outside the allowed input roots ({})",
                path.display(),
                policy
                    .input_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(source)
}

fn validate_output(output: &str, policy: &SpecPolicy) -> Result<PathBuf, InvalidSpec> {
    if output.trim().is_empty() {
        return Err(invalid("output", "required"));
    }
    if scheme_prefix(output).is_some() {
        return Err(invalid("output", "must be a path, not a URL"));
    }
    if output.chars().any(|c| c.is_control()) {
        return Err(invalid("output", "contains control characters"));
    }
    let root = normalize(&policy.output_root);
    // `..` is refused outright rather than resolved: a path that climbs out
    // and back in is a mistake or an attack, never what a user means.
    if Path::new(output)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(invalid("output", "must not contain '..'"));
    }
    let path = normalize(&root.join(output));
    if !path.starts_with(&root) || path == root {
        return Err(invalid(
            "output",
            format!("must be a file inside the output root {}", root.display()),
        ));
    }
    if output.ends_with('/') {
        return Err(invalid("output", "must name a file, not a directory"));
    }
    Ok(path)
}

fn validate_overrides(raw: &SubmittedSpec, preset: Preset) -> Result<Overrides, InvalidSpec> {
    let video = preset.video_codec().is_some();
    let refuse_without_video = |field: &'static str, present: bool| {
        if present && !video {
            Err(invalid(
                field,
                format!("preset {} does not encode video", preset.name()),
            ))
        } else {
            Ok(())
        }
    };
    refuse_without_video("overrides.crf", raw.crf.is_some())?;
    refuse_without_video("overrides.video_bitrate", raw.video_bitrate.is_some())?;
    refuse_without_video("overrides.height", raw.height.is_some())?;
    if raw.crf.is_some() && raw.video_bitrate.is_some() {
        return Err(invalid(
            "overrides.crf",
            "give crf or video_bitrate, not both",
        ));
    }
    if let Some(crf) = raw.crf
        && crf > 51
    {
        return Err(invalid("overrides.crf", "must be between 0 and 51"));
    }
    if let Some(bps) = raw.video_bitrate
        && !(10_000..=500_000_000).contains(&bps)
    {
        return Err(invalid(
            "overrides.video_bitrate",
            "must be between 10k and 500M bits/s",
        ));
    }
    if let Some(h) = raw.height
        && (!(16..=4320).contains(&h) || h % 2 != 0)
    {
        return Err(invalid(
            "overrides.height",
            "must be an even number between 16 and 4320",
        ));
    }
    if let Some(bps) = raw.audio_bitrate {
        if !preset.encodes_audio() {
            return Err(invalid(
                "overrides.audio_bitrate",
                "remux copies streams; it takes no audio bitrate",
            ));
        }
        if !(8_000..=1_024_000).contains(&bps) {
            return Err(invalid(
                "overrides.audio_bitrate",
                "must be between 8k and 1024k bits/s",
            ));
        }
    }
    let container = match &raw.container {
        None => None,
        Some(name) if name.is_empty() => None,
        Some(name) => {
            let c = Container::parse(name).ok_or_else(|| {
                invalid(
                    "overrides.container",
                    format!(
                        "unknown container {name:?}; one of {}",
                        Container::ALL.map(Container::name).join(", ")
                    ),
                )
            })?;
            if !preset.allows(c) {
                return Err(invalid(
                    "overrides.container",
                    format!("{} cannot carry preset {}", c.name(), preset.name()),
                ));
            }
            Some(c)
        }
    };
    Ok(Overrides {
        crf: raw.crf,
        video_bitrate: raw.video_bitrate,
        height: raw.height,
        audio_bitrate: raw.audio_bitrate,
        container,
    })
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), InvalidSpec> {
    if labels.len() > MAX_LABELS {
        return Err(invalid("labels", format!("at most {MAX_LABELS} labels")));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
        if !key_ok {
            return Err(invalid(
                "labels",
                format!("bad key {key:?}: 1 to 63 of [A-Za-z0-9_.-/]"),
            ));
        }
        if value.len() > 256 || value.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "labels",
                format!("bad value for {key:?}: at most 256 printable characters"),
            ));
        }
    }
    Ok(())
}

/// Resolves `.` and `..` lexically, without touching the filesystem.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SpecPolicy {
        SpecPolicy::new(PathBuf::from("/srv/out"))
    }

    fn raw() -> SubmittedSpec {
        SubmittedSpec {
            input: "/media/in.mp4".into(),
            output: "out.mp4".into(),
            preset: "h264-480p".into(),
            ..SubmittedSpec::default()
        }
    }

    fn field_of(raw: SubmittedSpec, policy: &SpecPolicy) -> &'static str {
        validate(raw, policy).unwrap_err().field
    }

    #[test]
    fn a_valid_spec_gets_defaults() {
        let spec = validate(raw(), &policy()).unwrap();
        assert_eq!(spec.output, "/srv/out/out.mp4");
        assert_eq!(spec.preset, Preset::H264_480p);
        assert_eq!(spec.resources, Preset::H264_480p.default_resources());
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.timeout_ms, 3_600_000);
        assert_eq!(spec.grace_ms, DEFAULT_GRACE_MS);
        assert_eq!(spec.container(), Container::Mp4);
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let p = policy();
        let cases: Vec<(SubmittedSpec, &str)> = vec![
            (
                SubmittedSpec {
                    input: "".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    input: "relative.mp4".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    input: "concat:/a.mp4|/b.mp4".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    input: "pipe:0".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    input: "file:///etc/passwd".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    input: "data:video/mp4;base64,AAAA".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    input: "ftp://host/a.mp4".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    input: "http:///nohost".into(),
                    ..raw()
                },
                "input",
            ),
            (
                SubmittedSpec {
                    preset: "".into(),
                    ..raw()
                },
                "preset",
            ),
            (
                SubmittedSpec {
                    preset: "h264-4k".into(),
                    ..raw()
                },
                "preset",
            ),
            (
                SubmittedSpec {
                    output: "".into(),
                    ..raw()
                },
                "output",
            ),
            (
                SubmittedSpec {
                    output: "../escape.mp4".into(),
                    ..raw()
                },
                "output",
            ),
            (
                SubmittedSpec {
                    output: "a/../../escape.mp4".into(),
                    ..raw()
                },
                "output",
            ),
            (
                SubmittedSpec {
                    output: "/etc/cron.d/x".into(),
                    ..raw()
                },
                "output",
            ),
            (
                SubmittedSpec {
                    output: "/srv/outside.mp4".into(),
                    ..raw()
                },
                "output",
            ),
            (
                SubmittedSpec {
                    output: "/srv/out".into(),
                    ..raw()
                },
                "output",
            ),
            (
                SubmittedSpec {
                    output: "dir/".into(),
                    ..raw()
                },
                "output",
            ),
            (
                SubmittedSpec {
                    resources: Some(Resources::new(0, 1, 1)),
                    ..raw()
                },
                "resources.cpu",
            ),
            (
                SubmittedSpec {
                    resources: Some(Resources::new(1, 0, 1)),
                    ..raw()
                },
                "resources.memory",
            ),
            (
                SubmittedSpec {
                    resources: Some(Resources::new(1, 1, 0)),
                    ..raw()
                },
                "resources.disk",
            ),
            (
                SubmittedSpec {
                    crf: Some(60),
                    ..raw()
                },
                "overrides.crf",
            ),
            (
                SubmittedSpec {
                    crf: Some(20),
                    video_bitrate: Some(1_000_000),
                    ..raw()
                },
                "overrides.crf",
            ),
            (
                SubmittedSpec {
                    height: Some(721),
                    ..raw()
                },
                "overrides.height",
            ),
            (
                SubmittedSpec {
                    preset: "aac".into(),
                    crf: Some(20),
                    ..raw()
                },
                "overrides.crf",
            ),
            (
                SubmittedSpec {
                    preset: "remux".into(),
                    audio_bitrate: Some(128_000),
                    ..raw()
                },
                "overrides.audio_bitrate",
            ),
            (
                SubmittedSpec {
                    container: Some("avi".into()),
                    ..raw()
                },
                "overrides.container",
            ),
            (
                SubmittedSpec {
                    container: Some("webm".into()),
                    ..raw()
                },
                "overrides.container",
            ),
            (
                SubmittedSpec {
                    max_attempts: 1000,
                    ..raw()
                },
                "max_attempts",
            ),
            (
                SubmittedSpec {
                    timeout_ms: u64::MAX,
                    ..raw()
                },
                "timeout",
            ),
            (
                SubmittedSpec {
                    grace_ms: MAX_GRACE_MS + 1,
                    ..raw()
                },
                "grace",
            ),
            (
                SubmittedSpec {
                    labels: [("bad key".to_owned(), "v".to_owned())].into(),
                    ..raw()
                },
                "labels",
            ),
            (
                SubmittedSpec {
                    input: "/srv/out/out.mp4".into(),
                    ..raw()
                },
                "output",
            ),
        ];
        for (spec, field) in cases {
            let shown = format!("{spec:?}");
            assert_eq!(field_of(spec, &p), field, "for {shown}");
        }
    }

    #[test]
    fn input_roots_confine_local_inputs() {
        let mut p = policy();
        p.input_roots = vec![PathBuf::from("/media")];
        assert!(validate(raw(), &p).is_ok());
        let escaped = SubmittedSpec {
            input: "/media/../etc/passwd".into(),
            ..raw()
        };
        assert_eq!(field_of(escaped, &p), "input");
        let elsewhere = SubmittedSpec {
            input: "/home/x.mp4".into(),
            ..raw()
        };
        assert_eq!(field_of(elsewhere, &p), "input");
        // URLs are not local paths: roots do not apply to them.
        let url = SubmittedSpec {
            input: "https://cdn.example/a.mp4".into(),
            ..raw()
        };
        assert!(validate(url, &p).is_ok());
    }

    #[test]
    fn http_inputs_are_accepted() {
        for url in ["http://127.0.0.1:8080/a.mp4", "HTTPS://example.com/x?y=1"] {
            let spec = validate(
                SubmittedSpec {
                    input: url.into(),
                    ..raw()
                },
                &policy(),
            )
            .unwrap();
            assert_eq!(spec.input_source(), InputSource::Http(url.into()));
        }
    }

    #[test]
    fn absolute_outputs_inside_the_root_are_kept() {
        let spec = validate(
            SubmittedSpec {
                output: "/srv/out/a/./b.mkv".into(),
                ..raw()
            },
            &policy(),
        )
        .unwrap();
        assert_eq!(spec.output, "/srv/out/a/b.mkv");
    }

    #[test]
    fn specs_round_trip_through_json() {
        let spec = validate(raw(), &policy()).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"h264-480p\""));
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }
}
