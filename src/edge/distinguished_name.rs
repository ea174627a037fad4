//! The text of a certificate's subject, as backends read it in
//! `X-Client-Cert-Subject` and as `client_cert` policies list it: RFC 4514,
//! written exactly as `openssl x509 -noout -subject -nameopt RFC2253` (and
//! nginx's `$ssl_client_s_dn`) write it, so that an operator can copy a
//! subject from either.
//!
//! - The last RDN of the certificate comes first (`CN=partner-a,O=Partner A`
//!   for a subject issued as `/O=Partner A/CN=partner-a`); RDNs are joined by
//!   `,`, the values of one multi-valued RDN by `+`, with no spaces.
//! - Attribute types by OpenSSL's short names (`CN`, `O`, `OU`, `C`, `L`,
//!   `ST`, `street`, `DC`, `UID`, `emailAddress`, `serialNumber`, ...);
//!   others as their dotted OID with the value as `#` and the hex of its DER.
//! - In values, `,+"\<>;` are escaped with `\`, as are a leading `#` and a
//!   leading or trailing space; control characters and every byte of a
//!   non-ASCII UTF-8 character are written `\XX` (upper-case hex). The text
//!   is therefore printable ASCII, and a valid header value.

use x509_parser::der_parser::asn1_rs::{Any, Tag, ToDer};
use x509_parser::prelude::X509Name;

/// OpenSSL's short names of the attribute types it names, by dotted OID.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "street"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "title"),
    ("2.5.4.15", "businessCategory"),
    ("2.5.4.17", "postalCode"),
    ("2.5.4.42", "GN"),
    ("2.5.4.43", "initials"),
    ("2.5.4.44", "generationQualifier"),
    ("2.5.4.46", "dnQualifier"),
    ("2.5.4.65", "pseudonym"),
    ("2.5.4.97", "organizationIdentifier"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
];

/// `name` as RFC 4514 text (see the module's doc).
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut text = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            text.push(',');
        }
        for (j, attribute) in rdn.iter().enumerate() {
            if j > 0 {
                text.push('+');
            }
            let oid = attribute.attr_type().to_id_string();
            let short = SHORT_NAMES.iter().find(|(id, _)| *id == oid);
            let value = short.and_then(|_| value_text(attribute.attr_value()));
            match (short, value) {
                (Some((_, short)), Some(value)) => {
                    text.push_str(short);
                    text.push('=');
                    escape_into(&value, &mut text);
                }
                (Some((_, short)), None) => {
                    text.push_str(short);
                    text.push('=');
                    hex_der_into(attribute.attr_value(), &mut text);
                }
                (None, _) => {
                    text.push_str(&oid);
                    text.push('=');
                    hex_der_into(attribute.attr_value(), &mut text);
                }
            }
        }
    }
    text
}

/// The text of a string value (UTF-8, printable, IA5, numeric, BMP,
/// universal, and T.61 read as Latin-1, as OpenSSL reads it); `None` for a
/// value of another type or one that does not decode.
fn value_text(value: &Any<'_>) -> Option<String> {
    let data = value.data;
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString => {
            std::str::from_utf8(data).ok().map(str::to_string)
        }
        Tag::T61String => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = data
                .chunks(2)
                .map(|pair| match pair {
                    [high, low] => Some(u16::from_be_bytes([*high, *low])),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => data
            .chunks(4)
            .map(|quad| {
                let code: [u8; 4] = quad.try_into().ok()?;
                char::from_u32(u32::from_be_bytes(code))
            })
            .collect(),
        _ => None,
    }
}

/// Appends `value` escaped as RFC 4514 (and OpenSSL's ESC_MSB) want.
fn escape_into(value: &str, text: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let edge_space = c == ' ' && (i == 0 || i == last);
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || edge_space
            || (c == '#' && i == 0)
        {
            text.push('\\');
            text.push(c);
        } else if c.is_ascii_control() || !c.is_ascii() {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                push_hex_escape(byte, text);
            }
        } else {
            text.push(c);
        }
    }
}

fn push_hex_escape(byte: u8, text: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    text.push('\\');
    text.push(char::from(HEX[usize::from(byte >> 4)]));
    text.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// Appends `#` and the hex of `value`'s DER (RFC 4514 2.4).
fn hex_der_into(value: &Any<'_>, text: &mut String) {
    text.push('#');
    let der = value.to_der_vec().unwrap_or_default();
    for byte in der {
        text.push_str(&format!("{byte:02X}"));
    }
}

/// Checks a subject a `client_cert` policy lists: RFC 4514 text as
/// [`rfc4514`] writes it, so that it can match.
pub fn check_subject(subject: &str) -> Result<(), String> {
    if subject.starts_with('/') {
        return Err(format!(
            "`{subject}` is OpenSSL's one-line form: write it as RFC 4514, last RDN first \
             (`openssl x509 -noout -subject -nameopt RFC2253` prints it)"
        ));
    }
    let mut component = String::new();
    let mut escaped = false;
    let check = |component: &str| -> Result<(), String> {
        let (kind, _) = component.split_once('=').unwrap_or(("", ""));
        if component.starts_with(' ') || component.ends_with(' ') {
            return Err(format!(
                "`{subject}`: no spaces around `,` and `+` (tollgate writes `CN=a,O=B`); \
                 a value's own leading or trailing space is written `\\ `"
            ));
        }
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
        if kind.is_empty() || !kind.bytes().all(plain) {
            return Err(format!(
                "`{subject}` is not an RFC 4514 subject: expected `TYPE=value` parts \
                 joined by `,` (`CN=partner-a,O=Partner A`)"
            ));
        }
        Ok(())
    };
    for c in subject.chars() {
        if escaped {
            escaped = false;
            component.push(c);
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                component.push(c);
            }
            ',' | '+' => {
                check(&component)?;
                component.clear();
            }
            _ => component.push(c),
        }
    }
    check(&component)
}

/// A listed subject as [`rfc4514`] would write it: characters that are not
/// printable ASCII written `\XX`, and hex escapes in upper case, so that
/// `CN=Jürgen` matches the `CN=J\C3\BCrgen` a certificate gives.
pub fn canonical_subject(subject: &str) -> String {
    let bytes = subject.as_bytes();
    let mut text = String::with_capacity(subject.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let hex_pair = bytes
            .get(i + 1..i + 3)
            .filter(|pair| pair.iter().all(u8::is_ascii_hexdigit));
        match (byte, hex_pair) {
            (b'\\', Some(pair)) => {
                text.push('\\');
                text.push_str(&String::from_utf8_lossy(pair).to_ascii_uppercase());
                i += 3;
            }
            (b'\\', None) => {
                text.push('\\');
                if let Some(&next) = bytes.get(i + 1).filter(|b| b.is_ascii()) {
                    text.push(char::from(next));
                    i += 1;
                }
                i += 1;
            }
            (byte, _) if byte.is_ascii() && !byte.is_ascii_control() => {
                text.push(char::from(byte));
                i += 1;
            }
            (byte, _) => {
                push_hex_escape(byte, &mut text);
                i += 1;
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn subject_of(dn: rcgen::DistinguishedName) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        rfc4514(parsed.subject())
    }

    #[test]
    fn last_rdn_first_without_spaces() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Partner A");
        dn.push(rcgen::DnType::CommonName, "partner-a");
        assert_eq!(subject_of(dn), "CN=partner-a,O=Partner A,C=DE");
    }

    #[test]
    fn special_characters_are_escaped() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "A, B+C \"D\" <E>;\\");
        dn.push(rcgen::DnType::CommonName, "#Jürgen ");
        assert_eq!(
            subject_of(dn),
            "CN=\\#J\\C3\\BCrgen\\ ,O=A\\, B\\+C \\\"D\\\" \\<E\\>\\;\\\\"
        );
    }

    #[test]
    fn listed_subjects_are_checked_and_made_canonical() {
        assert!(check_subject("CN=partner-a,O=Partner A").is_ok());
        assert!(check_subject("CN=a\\, b,O=x+OU=y").is_ok());
        assert!(check_subject("/O=Partner A/CN=partner-a")
            .unwrap_err()
            .contains("RFC2253"));
        assert!(check_subject("CN=a, O=b")
            .unwrap_err()
            .contains("no spaces"));
        assert!(check_subject("partner-a").is_err());
        assert!(check_subject("").is_err());
        assert_eq!(
            canonical_subject("CN=Jürgen,O=x\\c3"),
            "CN=J\\C3\\BCrgen,O=x\\C3"
        );
        assert_eq!(canonical_subject("CN=a\\,b"), "CN=a\\,b");
    }
}
