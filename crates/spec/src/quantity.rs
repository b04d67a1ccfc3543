//! Resource quantities as users write them: CPU shares and memory sizes.
//!
//! Both parsers use integer arithmetic only, so `"0.1"` CPUs is exactly 100_000_000 nanocpus
//! and no float rounding can make two equal specs differ.

/// Nanocpus in one millicpu, the finest CPU step a spec can ask for.
pub const NANOS_PER_MILLICPU: i64 = 1_000_000;

/// The smallest cpu limit accepted: 0.01 CPUs (10 millicpus).
///
/// Docker 20.10 checks `NanoCPUs` only against the host's cpu count, and runc then fails
/// the start with `cpu.cfs_quota_us: invalid argument` below 0.01 (a quota under 1 ms of its
/// 100 ms period); refusing it here turns that late task failure into an immediate 400.
pub const MIN_MILLICPUS: i64 = 10;

/// The smallest memory limit accepted: 6 MiB.
///
/// Docker 20.10 refuses a container memory limit under 6 MiB (6_291_456 bytes) at create
/// time; refusing it here turns a late task failure into an immediate 400.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

const CPUS_EXPECTED: &str = "expected a CPU count like \"0.5\", \"2\" or \"500m\"";
const MEMORY_EXPECTED: &str =
    "expected a size like \"512M\", \"1G\", \"1GiB\", \"512Mi\" or a plain byte count";

/// Parses a CPU quantity into Docker nanocpus.
///
/// Accepts a decimal count with at most three decimals (`"0.5"`, `"2"`, `"1.250"`) or whole
/// millicpus (`"500m"`). The smallest value is [`MIN_MILLICPUS`] (0.01).
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let millis: i64 = if let Some(digits) = s.strip_suffix('m') {
        if !is_digits(digits) {
            return Err(CPUS_EXPECTED.to_string());
        }
        digits.parse().map_err(|_| "is too large".to_string())?
    } else {
        let (int_part, frac_part) = split_decimal(s).ok_or_else(|| CPUS_EXPECTED.to_string())?;
        if frac_part.len() > 3 {
            return Err("has more than 3 decimals; the smallest step is 0.001 (\"1m\")".into());
        }
        let whole: i64 = int_part.parse().map_err(|_| "is too large".to_string())?;
        let frac: i64 = if frac_part.is_empty() {
            0
        } else {
            // Right-pad to milli precision: ".5" is 500 millicpus.
            format!("{frac_part:0<3}")
                .parse()
                .map_err(|_| CPUS_EXPECTED.to_string())?
        };
        whole
            .checked_mul(1000)
            .and_then(|m| m.checked_add(frac))
            .ok_or("is too large")?
    };
    if millis < MIN_MILLICPUS {
        return Err(
            "must be at least 0.01 (\"10m\"), the smallest cpu limit the container engine accepts"
                .into(),
        );
    }
    millis
        .checked_mul(NANOS_PER_MILLICPU)
        .ok_or_else(|| "is too large".to_string())
}

/// Parses a memory size into bytes.
///
/// A number (decimals allowed) followed by an optional unit: none or `B` for bytes; SI
/// `k`/`K`/`kB`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` (powers of 1000); IEC `Ki`/`KiB`,
/// `Mi`/`MiB`, `Gi`/`GiB`, `Ti`/`TiB` (powers of 1024). Lowercase `m` and `g` are refused
/// because Docker reads them as binary units and Kubernetes reads `m` as milli: the
/// spec should not guess. The result must be at least [`MIN_MEMORY_BYTES`]; a fractional
/// byte count is rounded down.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let multiplier: u128 = match unit {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1000,
        "M" | "MB" => 1000u128.pow(2),
        "G" | "GB" => 1000u128.pow(3),
        "T" | "TB" => 1000u128.pow(4),
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        "m" | "mb" | "g" | "gb" => {
            return Err(format!(
                "unit \"{unit}\" is ambiguous; write \"M\"/\"G\" (powers of 1000) or \"Mi\"/\"Gi\" (powers of 1024)"
            ));
        }
        _ => return Err(MEMORY_EXPECTED.to_string()),
    };
    let (int_part, frac_part) = split_decimal(number).ok_or_else(|| MEMORY_EXPECTED.to_string())?;
    // u128 holds any u64 byte count times 10^18, so the limits below keep the math exact.
    if int_part.len() > 20 || frac_part.len() > 18 {
        return Err("is too large or too precise".into());
    }
    let scale = 10u128.pow(frac_part.len() as u32);
    let whole: u128 = int_part.parse().map_err(|_| MEMORY_EXPECTED.to_string())?;
    let frac: u128 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().map_err(|_| MEMORY_EXPECTED.to_string())?
    };
    let bytes = whole
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac))
        .and_then(|v| v.checked_mul(multiplier))
        .map(|v| v / scale)
        .ok_or_else(|| "is too large".to_string())?;
    let bytes = u64::try_from(bytes).map_err(|_| "is too large".to_string())?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(
            "must be at least 6Mi (6291456 bytes), the smallest limit Docker accepts".into(),
        );
    }
    Ok(bytes)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits `"12.5"` into `("12", "5")`; requires digits on both sides of a dot when there is one.
fn split_decimal(s: &str) -> Option<(&str, &str)> {
    match s.split_once('.') {
        None if is_digits(s) => Some((s, "")),
        Some((i, f)) if is_digits(i) && is_digits(f) => Some((i, f)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_accepted() {
        let cases = [
            ("0.5", 500_000_000),
            ("2", 2_000_000_000),
            ("500m", 500_000_000),
            ("10m", 10_000_000),
            ("0.01", 10_000_000),
            ("0.011", 11_000_000),
            ("1.25", 1_250_000_000),
            ("1.250", 1_250_000_000),
            ("16", 16_000_000_000),
            ("2.0", 2_000_000_000),
        ];
        for (input, want) in cases {
            assert_eq!(parse_cpus(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn cpus_rejected() {
        for input in [
            "",
            "0",
            "0.0",
            "0m",
            "1m",
            "9m",
            "0.001",
            "0.005",
            "0.009",
            "-1",
            "-0.5",
            "-500m",
            "abc",
            "0.0001",
            "1.2345",
            "m",
            "1.5m",
            " 1",
            "1 ",
            ".5",
            "5.",
            "1e3",
            "1,5",
            "+1",
            "99999999999999999999",
            "9223372036854775807m",
            "10000000000000",
            "0x10",
        ] {
            assert!(parse_cpus(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn cpus_messages_say_what_was_expected() {
        assert_eq!(parse_cpus("abc").unwrap_err(), CPUS_EXPECTED);
        assert!(parse_cpus("0").unwrap_err().contains("at least"));
        assert!(parse_cpus("0.0001").unwrap_err().contains("3 decimals"));
    }

    #[test]
    fn memory_accepted() {
        let cases = [
            ("512M", 512_000_000),
            ("512MB", 512_000_000),
            ("1G", 1_000_000_000),
            ("1GB", 1_000_000_000),
            ("1GiB", 1 << 30),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("512Mi", 512 << 20),
            ("512MiB", 512 << 20),
            ("100000k", 100_000_000),
            ("7000K", 7_000_000),
            ("7000kB", 7_000_000),
            ("6144Ki", 6 << 20),
            ("1048576000", 1_048_576_000),
            ("6291456", MIN_MEMORY_BYTES),
            ("6291456B", MIN_MEMORY_BYTES),
            ("6Mi", MIN_MEMORY_BYTES),
            ("1T", 1_000_000_000_000),
            ("2Ti", 2 << 40),
            ("0.5G", 500_000_000),
            ("1.0000001G", 1_000_000_100),
        ];
        for (input, want) in cases {
            assert_eq!(parse_memory(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn memory_rejected() {
        for input in [
            "",
            "0",
            "0M",
            "-1G",
            "-512Mi",
            "abc",
            "1X",
            "1 G",
            " 1G",
            "G",
            "1.G",
            ".5G",
            "1e9",
            "100k",
            "1048576",
            "6291455",
            "5Mi",
            "512m",
            "1g",
            "1gb",
            "99999999999999999999999Ti",
            "18446744073709551616",
            "20000000Ti",
            "1.2.3G",
            "1Gi ",
        ] {
            assert!(parse_memory(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn memory_messages() {
        assert!(parse_memory("512m").unwrap_err().contains("ambiguous"));
        assert!(
            parse_memory("1048576")
                .unwrap_err()
                .contains("at least 6Mi")
        );
        assert_eq!(parse_memory("lots").unwrap_err(), MEMORY_EXPECTED);
        assert_eq!(
            parse_memory("18446744073709551616").unwrap_err(),
            "is too large"
        );
    }
}
