//! Certificates as a person reads them: subject, issuer, names, validity of each certificate
//! in a chain, and why verification refused a chain, in words.

use rustls::pki_types::CertificateDer;

/// One certificate of a chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertView {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// CN and subjectAltName dNSNames (as written).
    pub names: Vec<String>,
    /// Not before (UTC).
    pub not_before: String,
    /// Not after (UTC).
    pub not_after: String,
    /// Whether now lies between the two.
    pub valid_now: bool,
}

/// Describe a certificate; `None` when it does not parse.
pub fn view(der: &CertificateDer<'_>) -> Option<CertView> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_string)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                x509_parser::extensions::GeneralName::DNSName(d)
                    if !names.iter().any(|n| n.eq_ignore_ascii_case(d)) =>
                {
                    names.push((*d).to_string());
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let text = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .map(|a| std::net::IpAddr::from(a).to_string())
                            .ok(),
                        16 => <[u8; 16]>::try_from(*ip)
                            .map(|a| std::net::IpAddr::from(a).to_string())
                            .ok(),
                        _ => None,
                    };
                    if let Some(t) = text {
                        names.push(format!("IP:{t}"));
                    }
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Some(CertView {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
        valid_now: validity.is_valid(),
    })
}

/// The name an EHLO would use for this certificate: its CN, else its first dNSName.
pub fn identity_name(der: &CertificateDer<'_>) -> Option<String> {
    let v = view(der)?;
    v.names.into_iter().find(|n| !n.starts_with("IP:"))
}

/// Why a server chain was not trusted, in words.
pub fn explain(error: &rustls::Error, server_name: &str) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "not trusted: it does not chain to any CA in our trust anchors (--ca)".into()
            }
            C::Expired | C::ExpiredContext { .. } => {
                "not trusted: the certificate has expired".into()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "not trusted: the certificate is not valid yet".into()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!(
                    "not trusted: the certificate is not valid for the name we connected to ({server_name})"
                )
            }
            C::Revoked => "not trusted: the certificate is revoked".into(),
            C::BadSignature => "not trusted: a signature in the chain does not verify".into(),
            other => format!("not trusted: {other:?}"),
        },
        other => format!("not trusted: {other}"),
    }
}
