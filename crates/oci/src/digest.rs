//! Content digests (`sha256:…`, `sha512:…`), hashing while streaming, and verification.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256, Sha512};

use crate::Error;

/// A hash algorithm that content may be addressed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

/// A validated digest: `algorithm:hex`, hex in lower case of the algorithm's length.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidDigest {
            input: s.to_string(),
            reason: why.to_string(),
        };
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("expected ALGORITHM:HEX, such as sha256:<64 hex digits>"))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(bad(&format!(
                    "unsupported algorithm {other:?} (use sha256 or sha512)"
                )))
            }
        };
        if hex.len() != algorithm.hex_len() {
            return Err(bad(&format!(
                "{} digests have {} hex digits, this one has {}",
                algorithm.as_str(),
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the hex part may only hold 0-9 and a-f"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self::of(Algorithm::Sha256, bytes)
    }

    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut h = algorithm.hasher();
        h.update(bytes);
        h.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, which is also the blob's file name in an OCI layout.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as docker shows image IDs.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// Does `bytes` hash to this digest?
    pub fn matches(&self, bytes: &[u8]) -> bool {
        &Digest::of(self.algorithm, bytes) == self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for one algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// Wraps a reader and hashes and counts what passes through.
pub struct DigestReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> DigestReader<R> {
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        DigestReader {
            inner,
            hasher: algorithm.hasher(),
            count: 0,
        }
    }

    /// The digest and size of everything read so far.
    pub fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Wraps a writer and hashes and counts what passes through.
pub struct DigestWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> DigestWriter<W> {
    pub fn new(inner: W, algorithm: Algorithm) -> Self {
        DigestWriter {
            inner,
            hasher: algorithm.hasher(),
            count: 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.count)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that checks, as it reaches the end, that the stream had the expected digest and size.
///
/// Reading past the expected size, or ending with other content, is an `InvalidData` error whose
/// inner error is an [`Error::DigestMismatch`] or [`Error::SizeMismatch`] naming both values.
pub struct VerifyingReader<R> {
    inner: DigestReader<R>,
    expected: Digest,
    expected_size: Option<u64>,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>) -> Self {
        let alg = expected.algorithm();
        VerifyingReader {
            inner: DigestReader::new(inner, alg),
            expected,
            expected_size,
            done: false,
        }
    }

    fn check_end(&mut self) -> io::Result<()> {
        let count = self.inner.count;
        if let Some(size) = self.expected_size {
            if count != size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Error::SizeMismatch {
                        digest: self.expected.clone(),
                        expected: size,
                        actual: count,
                    },
                ));
            }
        }
        let actual = self.inner.hasher.clone().finish();
        if actual != self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::DigestMismatch {
                    expected: self.expected.clone(),
                    actual,
                },
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if let Some(size) = self.expected_size {
            if self.inner.count > size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Error::SizeMismatch {
                        digest: self.expected.clone(),
                        expected: size,
                        actual: self.inner.count,
                    },
                ));
            }
        }
        if n == 0 && !buf.is_empty() {
            self.check_end()?;
            self.done = true;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::sha256_of(b""));
        assert_eq!(d.short(), "e3b0c44298fc");
        let s512 = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(Digest::parse(&s512.to_string()).unwrap(), s512);
        assert!(s512.to_string().starts_with("sha512:ddaf35a193617aba"));
    }

    #[test]
    fn rejects_malformed() {
        for (input, want) in [
            ("e3b0c442", "ALGORITHM:HEX"),
            ("md5:abcd", "unsupported algorithm"),
            ("sha256:abc", "64 hex digits, this one has 3"),
            (
                &EMPTY.to_uppercase().replace("SHA256", "sha256"),
                "0-9 and a-f",
            ),
            ("sha512:00", "128 hex digits"),
        ] {
            let err = Digest::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
            assert!(err.contains(input), "{input}: {err}");
        }
    }

    #[test]
    fn verifying_reader_accepts_good_and_names_both_on_bad() {
        let good = Digest::sha256_of(b"hello");
        let mut out = Vec::new();
        VerifyingReader::new(&b"hello"[..], good.clone(), Some(5))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello");

        let err = VerifyingReader::new(&b"hellO"[..], good.clone(), Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&good.to_string()), "{err}");
        assert!(
            err.contains(&Digest::sha256_of(b"hellO").to_string()),
            "{err}"
        );

        let err = VerifyingReader::new(&b"hello!"[..], good.clone(), Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected 5 bytes") && err.contains("6"),
            "{err}"
        );

        let err = VerifyingReader::new(&b"hell"[..], good, Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 5 bytes, got 4"), "{err}");
    }

    #[test]
    fn digest_writer_counts() {
        let mut w = DigestWriter::new(Vec::new(), Algorithm::Sha256);
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        let (buf, d, n) = w.finish();
        assert_eq!((buf.as_slice(), n), (&b"hello"[..], 5));
        assert_eq!(d, Digest::sha256_of(b"hello"));
    }
}
