//! The few DER structures Secure Boot needs (PKCS#7 SignedData with one
//! signer), written by hand so every byte is fixed: no signing time, no
//! randomness, DER SET OF sorted.

use const_oid::ObjectIdentifier;
use der::Encode;

use super::key::SbKey;

pub const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
pub const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
pub const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
pub const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub const OID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
pub const OID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const INTEGER: u8 = 0x02;
pub const OCTET_STRING: u8 = 0x04;
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const BIT_STRING: u8 = 0x03;
/// [0] constructed (EXPLICIT [0], or IMPLICIT [0] of a constructed type).
pub const CTX0: u8 = 0xa0;

/// One tag-length-value, definite length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let sig = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | sig.len() as u8);
        out.extend_from_slice(sig);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded parts.
pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &parts.concat())
}

pub fn oid(o: &ObjectIdentifier) -> Vec<u8> {
    tlv(OID, o.as_bytes())
}

/// AlgorithmIdentifier { oid, NULL }.
pub fn alg(o: &ObjectIdentifier) -> Vec<u8> {
    seq(&[&oid(o), &[NULL, 0]])
}

/// The content bytes of a DER TLV at the start of `der` (without tag and
/// length), or None if it is not one well-formed TLV.
pub fn tlv_content(der: &[u8]) -> Option<&[u8]> {
    let first = *der.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in der.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    der.get(hdr..hdr.checked_add(len)?)
}

/// Why a PKCS#7 SignedData could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs7Error {
    #[error("cannot encode the signer's issuer/serial: {0}")]
    Issuer(String),
}

/// What the single signer signs.
pub enum Signed<'a> {
    /// Authenticated attributes: contentType = `content_type` and
    /// messageDigest = `digest`, plus `extra` (encoded Attribute SEQUENCEs);
    /// the signature covers their DER SET.
    Attributes { digest: &'a [u8], extra: &'a [Vec<u8>] },
    /// No attributes: the signature covers `data` directly
    /// (what `sign-efi-sig-list` does, PKCS7_NOATTR).
    Data(&'a [u8]),
}

/// PKCS#7 SignedData (version 1) with one SHA-256/RSA signer and its
/// certificate. `econtent` is the encoded content put inside
/// contentInfo's [0] (None: detached).
pub fn signed_data(
    key: &SbKey,
    content_type: &ObjectIdentifier,
    econtent: Option<&[u8]>,
    signed: Signed<'_>,
) -> Result<Vec<u8>, Pkcs7Error> {
    let tbs = &key.certificate().tbs_certificate;
    let issuer = tbs.issuer.to_der().map_err(|e| Pkcs7Error::Issuer(e.to_string()))?;
    let serial = tbs.serial_number.to_der().map_err(|e| Pkcs7Error::Issuer(e.to_string()))?;
    let version = [INTEGER, 1, 1];

    let (attrs_field, signature) = match signed {
        Signed::Attributes { digest, extra } => {
            let mut attrs = vec![
                seq(&[&oid(&OID_CONTENT_TYPE), &tlv(SET, &oid(content_type))]),
                seq(&[&oid(&OID_MESSAGE_DIGEST), &tlv(SET, &tlv(OCTET_STRING, digest))]),
            ];
            attrs.extend(extra.iter().cloned());
            attrs.sort();
            let body = attrs.concat();
            let signature = key.sign_sha256(&tlv(SET, &body));
            (tlv(CTX0, &body), signature)
        }
        Signed::Data(data) => (Vec::new(), key.sign_sha256(data)),
    };
    let signer_info = seq(&[
        &version,
        &seq(&[&issuer, &serial]),
        &alg(&OID_SHA256),
        &attrs_field,
        &alg(&OID_RSA_ENCRYPTION),
        &tlv(OCTET_STRING, &signature),
    ]);
    let content_info = match econtent {
        Some(c) => seq(&[&oid(content_type), &tlv(CTX0, c)]),
        None => seq(&[&oid(content_type)]),
    };
    Ok(seq(&[
        &version,
        &tlv(SET, &alg(&OID_SHA256)),
        &content_info,
        &tlv(CTX0, key.cert_der()),
        &tlv(SET, &signer_info),
    ]))
}

/// ContentInfo { signedData, [0] SignedData }.
pub fn content_info(signed_data: &[u8]) -> Vec<u8> {
    seq(&[&oid(&OID_SIGNED_DATA), &tlv(CTX0, signed_data)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_minimal_definite() {
        assert_eq!(tlv(OCTET_STRING, &[7; 3]), [4, 3, 7, 7, 7]);
        let long = tlv(OCTET_STRING, &[0; 200]);
        assert_eq!(long.get(..3), Some(&[4u8, 0x81, 200][..]));
        let longer = tlv(OCTET_STRING, &[0; 300]);
        assert_eq!(longer.get(..4), Some(&[4u8, 0x82, 1, 44][..]));
        assert_eq!(tlv_content(&longer).map(<[u8]>::len), Some(300));
        assert_eq!(tlv_content(&[4, 5, 1]), None);
    }
}
