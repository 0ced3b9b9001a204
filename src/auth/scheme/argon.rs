//! ARGON2I / ARGON2ID: PHC strings as libsodium writes them
//! (`$argon2id$v=19$m=65536,t=3,p=1$salt$hash`). The variant, version and
//! costs come from the string, so either scheme name verifies either variant,
//! as in Dovecot.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version};

/// The largest memory cost we accept from a passwd-file, in KiB (1 GiB): a
/// typo there must not make every login try to allocate the machine.
const M_COST_KIB_MAX: u32 = 1 << 20;

/// Argon2 variants Dovecot (libsodium) supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    I,
    Id,
}

/// A parsed PHC string and its costs `(m KiB, t, p)`.
#[derive(Clone)]
pub(super) struct Parsed {
    pub(super) hash: PasswordHash,
    pub(super) variant: Variant,
    pub(super) costs: (u32, u32, u32),
}

/// Parses and checks a PHC string: argon2i or argon2id, with salt and hash,
/// and costs we are willing to pay.
pub(super) fn parse(text: &str) -> Result<Parsed, &'static str> {
    let hash = PasswordHash::new(text).map_err(|_| "malformed argon2 string")?;
    let variant = match hash.algorithm.as_str() {
        "argon2i" => Variant::I,
        "argon2id" => Variant::Id,
        _ => return Err("argon2 variant is not argon2i or argon2id"),
    };
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("argon2 string without salt or hash");
    }
    let params = Params::try_from(&hash).map_err(|_| "argon2 parameters out of range")?;
    if params.m_cost() > M_COST_KIB_MAX {
        return Err("argon2 memory cost above 1 GiB");
    }
    let costs = (params.m_cost(), params.t_cost(), params.p_cost());
    Ok(Parsed {
        hash,
        variant,
        costs,
    })
}

/// Whether `password` matches the parsed PHC string (constant-time compare
/// inside the argon2 crate).
pub(super) fn verify(hash: &PasswordHash, password: &[u8]) -> bool {
    Argon2::default().verify_password(password, hash).is_ok()
}

/// A PHC string for `password` with `salt`, with the costs `doveadm pw`
/// uses (libsodium's "interactive" limits): argon2id m=64 MiB t=3,
/// argon2i m=32 MiB t=4, one lane.
pub(super) fn generate(variant: Variant, password: &[u8], salt: &[u8]) -> String {
    let (algorithm, m_cost, t_cost) = match variant {
        Variant::I => (Algorithm::Argon2i, 32 * 1024, 4),
        Variant::Id => (Algorithm::Argon2id, 64 * 1024, 3),
    };
    let params = Params::new(m_cost, t_cost, 1, None).expect("constant costs are valid");
    let hasher = Argon2::new(algorithm, Version::V0x13, params);
    let hash = argon2::PasswordHasher::hash_password_with_salt(&hasher, password, salt)
        .expect("salt length and costs are valid");
    hash.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doveadm_known_answers() {
        // From Dovecot 2.3.19's `doveadm pw -s ARGON2ID|ARGON2I -p secret`.
        let table = [
            (
                "$argon2id$v=19$m=65536,t=3,p=1$V4QrhNaip2GEKzw6WMxpYg$zP3cf2zIXX8qD4yhtmkodguwyIwQLLLJwX7RPyK+ZMQ",
                Variant::Id,
            ),
            (
                "$argon2i$v=19$m=32768,t=4,p=1$ydYw3lp1339gPJGe0ckTNA$l64p/hcMeALV7w0Y6/L+Hln9VvIWcHbFcgT0WDTnQkw",
                Variant::I,
            ),
        ];
        for (text, variant) in table {
            let parsed = parse(text).expect(text);
            assert_eq!(parsed.variant, variant);
            assert!(verify(&parsed.hash, b"secret"), "{text}");
            assert!(!verify(&parsed.hash, b"secreT"), "{text}");
        }
    }

    #[test]
    fn refuses_what_we_will_not_verify() {
        let table = [
            "$argon2d$v=19$m=65536,t=3,p=1$V4QrhNaip2GEKzw6WMxpYg$zP3cf2zIXX8qD4yhtmkodguwyIwQLLLJwX7RPyK+ZMQ",
            "$argon2id$v=19$m=2097152,t=3,p=1$V4QrhNaip2GEKzw6WMxpYg$zP3cf2zIXX8qD4yhtmkodguwyIwQLLLJwX7RPyK+ZMQ",
            "$argon2id$v=19$m=65536,t=3,p=1$V4QrhNaip2GEKzw6WMxpYg",
            "$argon2id$v=19$m=65536,t=3,p=1",
            "argon2id",
        ];
        for text in table {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
