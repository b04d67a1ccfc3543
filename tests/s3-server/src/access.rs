//! Two answers of real S3 that s3s and s3s-fs do not give by themselves, made here before a
//! request reaches s3s-fs:
//!
//! - A request signed for another region than the server's is refused
//!   (`AuthorizationHeaderMalformed`), so a client configured with the wrong region fails
//!   here as it would against AWS. s3s verifies a signature with whatever region the request
//!   names.
//! - HEAD or GET of a key that is only a prefix of other keys (`x` when `x/a` exists) is
//!   `404 NoSuchKey`. s3s-fs keeps `x/a` as the file `x/a`, so `x` is a directory, which it
//!   tries to read and answers `500`. pgBackRest asks for such keys: `repo-ls PATH` first
//!   HEADs `PATH`.

use std::path::{Component, Path, PathBuf};

use s3s::access::{S3Access, S3AccessContext};
use s3s::dto::{GetObjectInput, HeadObjectInput};
use s3s::{S3Request, S3Result, s3_error};

/// What the server checks before s3s-fs runs a request.
pub struct Checks {
    /// The server's region: requests whose credential scope names another are refused.
    pub region: String,
    /// s3s-fs's root: bucket `B`'s key `K` is the file `root/B/K`.
    pub root: PathBuf,
}

impl Checks {
    /// `NoSuchKey` when `key` of `bucket` is a directory under the root, not a file.
    fn no_directory(&self, bucket: &str, key: &str) -> S3Result<()> {
        // Only plain relative names are looked at; s3s-fs itself resolves anything else.
        let plain = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
        let path = Path::new(bucket).join(key);
        if plain(&path) && self.root.join(&path).is_dir() {
            return Err(s3_error!(NoSuchKey));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3Access for Checks {
    /// Allows signed requests whose credential scope names the server's region; refuses
    /// anonymous ones (as s3s's default check does) and ones scoped to another region.
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        }
        let authorization = cx
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let query = cx.uri().query();
        match signed_region(authorization, query) {
            Some(r) if r != self.region => Err(s3_error!(
                AuthorizationHeaderMalformed,
                "the region '{r}' is wrong; expecting '{}'",
                self.region
            )),
            _ => Ok(()),
        }
    }

    async fn head_object(&self, req: &mut S3Request<HeadObjectInput>) -> S3Result<()> {
        self.no_directory(&req.input.bucket, &req.input.key)
    }

    async fn get_object(&self, req: &mut S3Request<GetObjectInput>) -> S3Result<()> {
        self.no_directory(&req.input.bucket, &req.input.key)
    }
}

/// The region of a SigV4 credential scope (`AK/DATE/REGION/s3/aws4_request`), from the
/// `Authorization` header (`AWS4-HMAC-SHA256 Credential=SCOPE, ...`) or a presigned URL's
/// `X-Amz-Credential` (URL-encoded, `/` as `%2F`). None: no SigV4 scope (s3s has already
/// authenticated the request, e.g. with SigV2, which names no region).
fn signed_region(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    let scope = authorization
        .and_then(|a| a.split_once("Credential="))
        .map(|(_, rest)| rest.split([',', ' ']).next().unwrap_or("").to_string())
        .or_else(|| {
            query?
                .split('&')
                .find_map(|kv| kv.strip_prefix("X-Amz-Credential="))
                .map(|v| v.replace("%2F", "/").replace("%2f", "/"))
        })?;
    // The access key may itself contain '/', so count from the end.
    let parts: Vec<&str> = scope.rsplitn(4, '/').collect();
    (parts.len() == 4).then(|| parts[2].to_string())
}

#[cfg(test)]
mod tests {
    use super::{Checks, signed_region};
    use s3s::S3ErrorCode;

    #[test]
    fn a_key_that_is_a_directory_is_no_such_key() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bkt/x")).unwrap();
        std::fs::write(root.path().join("bkt/x/a"), b"").unwrap();
        let checks = Checks {
            region: "us-east-1".into(),
            root: root.path().to_path_buf(),
        };
        for key in ["x", "x/"] {
            let e = checks.no_directory("bkt", key).unwrap_err();
            assert_eq!(*e.code(), S3ErrorCode::NoSuchKey, "{key}");
        }
        assert!(checks.no_directory("bkt", "x/a").is_ok());
        assert!(checks.no_directory("bkt", "missing").is_ok());
        // Not a plain name: left to s3s-fs.
        assert!(checks.no_directory("bkt", "../bkt/x").is_ok());
    }

    #[test]
    fn reads_the_region_of_a_header_or_a_presigned_url() {
        let header = "AWS4-HMAC-SHA256 Credential=AK/20260101/eu-west-3/s3/aws4_request, \
                      SignedHeaders=host, Signature=abc";
        assert_eq!(
            signed_region(Some(header), None).as_deref(),
            Some("eu-west-3")
        );
        let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=x";
        assert_eq!(
            signed_region(None, Some(query)).as_deref(),
            Some("us-east-1")
        );
        assert_eq!(signed_region(Some("AWS AK:sig"), None), None);
        assert_eq!(signed_region(None, None), None);
    }
}
