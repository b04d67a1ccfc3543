//! Naming rules shared by every kind of identifier in a spec.
//!
//! Ids end up in container names, etcd keys, Postgres role names and DNS labels, so they are
//! kept to the intersection of what all of those accept.

/// The longest id: long enough for a UUID, short enough for DNS labels once prefixed.
pub const MAX_ID_LEN: usize = 36;

/// Postgres truncates identifiers to 63 bytes (NAMEDATALEN - 1); refusing longer names
/// avoids two names silently colliding after truncation.
pub const MAX_PG_IDENTIFIER_LEN: usize = 63;

/// Rules for database ids, service ids, host ids and RAG pipeline names: 1 to 36 lowercase
/// letters, digits and hyphens, starting and ending with a letter or digit, no `--`.
pub fn validate_id(id: &str) -> Result<(), String> {
    const RULE: &str = "must be 1-36 lowercase letters, digits or hyphens, start and end with a letter or digit, without \"--\"";
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--");
    if ok { Ok(()) } else { Err(RULE.to_string()) }
}

/// Tenant ids (the owner's identifier a create or update may carry): the reference pgEdge
/// Control Plane API's `Identifier`, 1 to 63 lowercase letters, digits and hyphens, starting
/// and ending with a letter or digit, no `--`. Only stored and returned, so the 36 of
/// [`validate_id`] (which names containers and roles) does not apply.
pub fn validate_tenant_id(id: &str) -> Result<(), String> {
    const RULE: &str = "must be 1-63 lowercase letters, digits or hyphens, start and end with a letter or digit, without \"--\"";
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--");
    if ok { Ok(()) } else { Err(RULE.to_string()) }
}

/// Node names: `n` followed by digits (`n1`, `n2`, ...).
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 12
        && name
            .strip_prefix('n')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err("must be \"n\" followed by digits, like \"n1\"".to_string())
    }
}

/// An unquoted lowercase Postgres identifier: a lowercase letter or underscore, then
/// lowercase letters, digits or underscores, at most 63 bytes.
pub fn validate_pg_identifier(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = name.len() <= MAX_PG_IDENTIFIER_LEN
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("must be a Postgres identifier: a lowercase letter or underscore, then lowercase letters, digits or underscores, at most 63 bytes".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in [
            "a",
            "1",
            "example",
            "host-1",
            "mcp-server",
            "a1-b2-c3",
            "123e4567-e89b-12d3-a456-426614174000",
        ] {
            assert_eq!(validate_id(ok), Ok(()), "{ok}");
        }
        let too_long = "a".repeat(37);
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "A",
            "a_b",
            "a.b",
            "a b",
            "é",
            too_long.as_str(),
            "host-1\n",
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(validate_id(&"a".repeat(36)), Ok(()));
    }

    #[test]
    fn tenant_ids() {
        for ok in [
            "engineering",
            "8210ec10-2dca-406c-ac4a-0661d2189954",
            &"a".repeat(63),
        ] {
            assert_eq!(validate_tenant_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "Eng", "a_b", &"a".repeat(64)] {
            assert!(validate_tenant_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names() {
        for ok in ["n1", "n2", "n10", "n0"] {
            assert_eq!(validate_node_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "n", "1", "node1", "N1", "n1a", "n-1", "n123456789012"] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pg_identifiers() {
        for ok in ["example", "_x", "app_db2", &"a".repeat(63)] {
            assert_eq!(validate_pg_identifier(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1db",
            "Example",
            "my-db",
            "my db",
            "db$",
            &"a".repeat(64),
        ] {
            assert!(validate_pg_identifier(bad).is_err(), "{bad:?}");
        }
    }
}
