//! CPU, memory and disk amounts, and the parsers for their human forms.

use serde::{Deserialize, Serialize};

/// An amount of the three resources a job reserves on a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a core.
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
        disk_bytes: 0,
    };

    pub const fn new(cpu_millis: u32, memory_bytes: u64, disk_bytes: u64) -> Self {
        Resources {
            cpu_millis,
            memory_bytes,
            disk_bytes,
        }
    }

    /// Whether `request` fits inside `self` on every axis.
    pub fn fits(&self, request: &Resources) -> bool {
        request.cpu_millis <= self.cpu_millis
            && request.memory_bytes <= self.memory_bytes
            && request.disk_bytes <= self.disk_bytes
    }

    /// `self - other`, floored at zero on each axis.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(other.disk_bytes),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
        }
    }

    /// The axis (by name) that is zero, if any: a job must ask for some of each.
    pub fn zero_axis(&self) -> Option<&'static str> {
        if self.cpu_millis == 0 {
            Some("cpu")
        } else if self.memory_bytes == 0 {
            Some("memory")
        } else if self.disk_bytes == 0 {
            Some("disk")
        } else {
            None
        }
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu {} memory {} disk {}",
            format_cpu(self.cpu_millis),
            format_size(self.memory_bytes),
            format_size(self.disk_bytes)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {why}")]
pub struct ParseError {
    pub what: &'static str,
    pub input: String,
    pub why: &'static str,
}

/// Parses a size such as `512M`, `4G`, `1.5GiB`, `1000000` (bytes). Suffixes
/// are binary (K = 1024), as operators mean them for memory and disk.
pub fn parse_size(input: &str) -> Result<u64, ParseError> {
    let err = |why| ParseError {
        what: "size",
        input: input.to_owned(),
        why,
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(err("expected a number, e.g. 512M or 4G"));
    }
    let value: f64 = number.parse().map_err(|_| err("not a number"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(err("unknown unit (use K, M, G or T)")),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a CPU amount in cores (`1.5`, `2`) or millicores (`1500m`).
pub fn parse_cpu(input: &str) -> Result<u32, ParseError> {
    let err = |why| ParseError {
        what: "cpu",
        input: input.to_owned(),
        why,
    };
    let s = input.trim();
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u32>()
            .map_err(|_| err("expected millicores, e.g. 1500m"))? as f64
    } else {
        let cores: f64 = s.parse().map_err(|_| err("expected cores, e.g. 1.5"))?;
        cores * 1000.0
    };
    if !millis.is_finite() || millis < 0.0 || millis > u32::MAX as f64 {
        return Err(err("out of range"));
    }
    Ok(millis.round() as u32)
}

pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn format_cpu(millis: u32) -> String {
    format!("{:.2}", millis as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn cpu_parses_cores_and_millicores() {
        assert_eq!(parse_cpu("1.5").unwrap(), 1500);
        assert_eq!(parse_cpu("250m").unwrap(), 250);
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("lots").is_err());
    }

    #[test]
    fn fits_checks_every_axis() {
        let free = Resources::new(2000, 4 << 30, 10 << 30);
        assert!(free.fits(&Resources::new(2000, 4 << 30, 10 << 30)));
        assert!(!free.fits(&Resources::new(2001, 1, 1)));
        assert!(!free.fits(&Resources::new(1, (4 << 30) + 1, 1)));
        assert!(!free.fits(&Resources::new(1, 1, (10 << 30) + 1)));
    }
}
