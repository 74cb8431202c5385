//! What webpki (the parser rustls runs on every certificate, and so ours)
//! checks but does not hand out: a certificate's validity period, and the
//! raw key inside the SubjectPublicKeyInfo it gives. Call these only on DER
//! that webpki has already parsed; they still check every bound and return
//! `None` on anything unexpected.

/// One DER element at the front of `input`: its tag, its contents and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        short @ 0..=0x7f => (usize::from(short), rest),
        // Long form, at most 4 length bytes (certificates are far smaller).
        0x81..=0x84 => {
            let (bytes, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
            (bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b)), rest)
        }
        _ => return None,
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`, absent in v1 certificates.
const VERSION: u8 = 0xa0;

/// `(notBefore, notAfter)` of the certificate `der`, in seconds since the Unix epoch.
pub(crate) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (SEQUENCE, certificate, _) = element(der)? else { return None };
    let (SEQUENCE, tbs, _) = element(certificate)? else { return None };
    let mut fields = tbs;
    if fields.first() == Some(&VERSION) {
        fields = element(fields)?.2;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        fields = element(fields)?.2;
    }
    let (SEQUENCE, validity, _) = element(fields)? else { return None };
    let (tag, not_before, rest) = element(validity)?;
    let not_before = unix_time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    Some((not_before, unix_time(tag, not_after)?))
}

/// The key bits of a `SubjectPublicKeyInfo` (with its outer SEQUENCE): for
/// an EC key, the encoded point.
pub(crate) fn public_key_bits(spki: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, spki, _) = element(spki)? else { return None };
    let (SEQUENCE, _algorithm, rest) = element(spki)? else { return None };
    let (BIT_STRING, bits, _) = element(rest)? else { return None };
    // The first byte counts the unused bits of the last one: none in a key.
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

/// A certificate time (RFC 5280 4.1.2.5: `YYMMDDHHMMSSZ`, years 1950-2049, or
/// `YYYYMMDDHHMMSSZ`) in seconds since the Unix epoch.
fn unix_time(tag: u8, text: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let (yy, rest) = text.split_at(2);
            let yy = i32::from(number(yy)?);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, rest)
        }
        (GENERALIZED_TIME, 15) => {
            let (century, rest) = text.split_at(2);
            let (yy, rest) = rest.split_at(2);
            (i32::from(number(century)?) * 100 + i32::from(number(yy)?), rest)
        }
        _ => return None,
    };
    let [m0, m1, d0, d1, h0, h1, mi0, mi1, s0, s1, b'Z'] = *rest else { return None };
    let month = time::Month::try_from(number(&[m0, m1])?).ok()?;
    let date = time::Date::from_calendar_date(year, month, number(&[d0, d1])?).ok()?;
    let time = time::Time::from_hms(number(&[h0, h1])?, number(&[mi0, mi1])?, number(&[s0, s1])?).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
}

/// Two ASCII digits.
fn number(digits: &[u8]) -> Option<u8> {
    match *digits {
        [tens @ b'0'..=b'9', ones @ b'0'..=b'9'] => Some((tens - b'0') * 10 + (ones - b'0')),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_times_are_read_in_both_forms_and_refused_when_malformed() {
        assert_eq!(unix_time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(unix_time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(unix_time(UTC_TIME, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(unix_time(GENERALIZED_TIME, b"20500101000000Z"), Some(2_524_608_000));
        assert_eq!(unix_time(UTC_TIME, b"700101000000+"), None, "only Z");
        assert_eq!(unix_time(UTC_TIME, b"701301000000Z"), None, "month 13");
        assert_eq!(unix_time(UTC_TIME, b"7001010000Z"), None, "no seconds");
        assert_eq!(unix_time(GENERALIZED_TIME, b"700101000000Z"), None, "a UTCTime's length");
    }

    #[test]
    fn truncated_or_overlong_elements_are_refused() {
        assert_eq!(element(&[SEQUENCE, 2, 1, 2, 3]), Some((SEQUENCE, &[1u8, 2][..], &[3u8][..])));
        assert_eq!(element(&[SEQUENCE, 3, 1, 2]), None);
        assert_eq!(element(&[SEQUENCE, 0x81]), None);
        assert_eq!(element(&[SEQUENCE, 0x85, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(validity(&[SEQUENCE, 0]), None);
        assert_eq!(public_key_bits(&[SEQUENCE, 4, SEQUENCE, 0, BIT_STRING, 0]), None);
    }

    proptest::proptest! {
        /// Any bytes, and any corruption of a real certificate: an answer or
        /// `None`, never a panic (what a peer sends reaches these readers).
        #[test]
        fn no_input_makes_the_readers_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            flips in proptest::collection::vec((0usize..2048, proptest::num::u8::ANY), 1..8),
        ) {
            let _ = validity(&bytes);
            let _ = public_key_bits(&bytes);
            let ca = crate::Ca::generate("fuzz").expect("a CA");
            let issued = ca.issue_client("fuzz", std::time::Duration::from_secs(3600)).expect("a certificate");
            let mut der = crate::files::pem_to_der(&issued.cert_pem, "CERTIFICATE").expect("der");
            for (at, byte) in flips {
                let len = der.len();
                der[at % len] ^= byte;
            }
            let _ = validity(&der);
            let _ = crate::CertInfo::from_der(&der);
        }
    }
}
