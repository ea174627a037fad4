//! bcrypt (Provos and Mazières, 1999) as htpasswd -B writes it: `$2y$` (or
//! `$2b$`, `$2a$`), a two-digit cost, a 22-character salt and a 31-character
//! hash, in bcrypt's own base64. Only checking a password against a stored
//! hash is needed here.
//!
//! Written here because no bcrypt crate could be had for this build (the
//! build has only the crates already in its lock file); it is checked against
//! the system's crypt(3) (libxcrypt) in the tests and the integration tests.

use super::pi::{P, S};
use subtle::ConstantTimeEq;

/// bcrypt's own base64 alphabet.
const ALPHABET: &[u8; 64] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The 192-bit text bcrypt encrypts 64 times.
const MAGIC: &[u8; 24] = b"OrpheanBeholderScryDoubt";
const MIN_COST: u32 = 4;
const MAX_COST: u32 = 31;
/// bcrypt uses at most 72 bytes of a password (the NUL included).
const MAX_KEY: usize = 72;

/// A stored hash, parsed.
#[derive(Clone)]
pub(crate) struct BcryptHash {
    cost: u32,
    salt: [u8; 16],
    hash: [u8; 23],
}

impl BcryptHash {
    /// Parses `$2y$CC$<salt><hash>` (`$2b$` and `$2a$` too, which this
    /// implementation computes alike); why not, otherwise.
    pub(crate) fn parse(text: &str) -> Result<BcryptHash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let [empty, variant, cost, rest] = parts[..] else {
            return Err("not a bcrypt hash (`$2y$CC$...`)".to_string());
        };
        if !empty.is_empty() || !matches!(variant, "2a" | "2b" | "2y") {
            return Err(format!(
                "`${variant}$` is not a bcrypt variant tollgate accepts (2y, 2b, 2a)"
            ));
        }
        let cost: u32 = cost
            .parse()
            .ok()
            .filter(|c| (MIN_COST..=MAX_COST).contains(c) && cost.len() == 2)
            .ok_or_else(|| format!("bcrypt cost `{cost}` is not 04 to 31"))?;
        if rest.len() != 53 || !rest.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err("a bcrypt hash has 53 characters of ./A-Za-z0-9 after its cost".into());
        }
        let salt = decode(&rest.as_bytes()[..22]);
        let hash = decode(&rest.as_bytes()[22..]);
        Ok(BcryptHash {
            cost,
            salt: salt[..16].try_into().map_err(|_| "bad salt".to_string())?,
            hash: hash[..23].try_into().map_err(|_| "bad hash".to_string())?,
        })
    }

    /// A hash of `cost` no password is known to make: verifying against it
    /// takes as long as against a real one, and fails.
    pub(crate) fn unmatchable(cost: u32) -> BcryptHash {
        BcryptHash {
            cost: cost.clamp(MIN_COST, MAX_COST),
            salt: *b"tollgate-unknown",
            hash: [0; 23],
        }
    }

    pub(crate) fn cost(&self) -> u32 {
        self.cost
    }

    /// Whether `password` is the one this hash was made from; the comparison
    /// takes the same time wherever the hashes differ. Costly by design
    /// (2^cost key schedules): run it off the request's thread.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        let computed = hash(self.cost, &self.salt, password);
        computed.ct_eq(&self.hash).into()
    }
}

/// The 23 bytes bcrypt keeps of its output for `password` with `salt`.
fn hash(cost: u32, salt: &[u8; 16], password: &[u8]) -> [u8; 23] {
    let mut key = Vec::with_capacity(MAX_KEY);
    key.extend_from_slice(&password[..password.len().min(MAX_KEY)]);
    if key.len() < MAX_KEY {
        key.push(0);
    }
    let mut state = Blowfish::initial();
    state.expand_key(salt, &key);
    for _ in 0..(1u64 << cost) {
        state.expand_key(&[], &key);
        state.expand_key(&[], salt);
    }
    let mut words: [u32; 6] = std::array::from_fn(|i| {
        u32::from_be_bytes([
            MAGIC[4 * i],
            MAGIC[4 * i + 1],
            MAGIC[4 * i + 2],
            MAGIC[4 * i + 3],
        ])
    });
    for _ in 0..64 {
        for pair in words.chunks_exact_mut(2) {
            let (l, r) = state.encrypt(pair[0], pair[1]);
            pair[0] = l;
            pair[1] = r;
        }
    }
    let mut out = [0u8; 24];
    for (i, word) in words.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    let mut kept = [0u8; 23];
    kept.copy_from_slice(&out[..23]);
    kept
}

struct Blowfish {
    p: [u32; 18],
    s: [[u32; 256]; 4],
}

impl Blowfish {
    fn initial() -> Blowfish {
        Blowfish { p: P, s: S }
    }

    fn f(&self, x: u32) -> u32 {
        let [a, b, c, d] = x.to_be_bytes();
        (self.s[0][a as usize].wrapping_add(self.s[1][b as usize]) ^ self.s[2][c as usize])
            .wrapping_add(self.s[3][d as usize])
    }

    fn encrypt(&self, mut l: u32, mut r: u32) -> (u32, u32) {
        for i in 0..16 {
            l ^= self.p[i];
            r ^= self.f(l);
            std::mem::swap(&mut l, &mut r);
        }
        std::mem::swap(&mut l, &mut r);
        r ^= self.p[16];
        l ^= self.p[17];
        (l, r)
    }

    /// bcrypt's ExpandKey: `key` into the P-array, then the whole state
    /// re-encrypted, mixing in `salt` (none when empty) as it goes.
    fn expand_key(&mut self, salt: &[u8], key: &[u8]) {
        let mut key_at = 0;
        for word in self.p.iter_mut() {
            *word ^= next_word(key, &mut key_at);
        }
        let mut salt_at = 0;
        let mut block = (0u32, 0u32);
        let mut next_block = |state: &Blowfish, block: (u32, u32)| {
            let (mut l, mut r) = block;
            if !salt.is_empty() {
                l ^= next_word(salt, &mut salt_at);
                r ^= next_word(salt, &mut salt_at);
            }
            state.encrypt(l, r)
        };
        for i in (0..18).step_by(2) {
            block = next_block(self, block);
            self.p[i] = block.0;
            self.p[i + 1] = block.1;
        }
        for b in 0..4 {
            for i in (0..256).step_by(2) {
                block = next_block(self, block);
                self.s[b][i] = block.0;
                self.s[b][i + 1] = block.1;
            }
        }
    }
}

/// The next four bytes of `data`, cycling, as a big-endian word.
fn next_word(data: &[u8], at: &mut usize) -> u32 {
    let mut word = 0u32;
    for _ in 0..4 {
        word = (word << 8) | u32::from(data[*at]);
        *at = (*at + 1) % data.len();
    }
    word
}

/// Decodes bcrypt base64 (no padding; trailing bits dropped).
fn decode(text: &[u8]) -> Vec<u8> {
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).unwrap_or(0) as u32;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits = 0u32;
    let mut count = 0;
    for &c in text {
        bits = (bits << 6) | value(c);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenBSD's and libxcrypt's reference vectors, and hashes made by the
    /// system's crypt(3) for these tests.
    const VECTORS: &[(&str, &str)] = &[
        (
            "U*U",
            "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        ),
        (
            "password",
            "$2y$05$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu",
        ),
    ];

    #[test]
    fn the_initial_state_is_pi() {
        assert_eq!(P[0], 0x243f_6a88);
        assert_eq!(P[17], 0x8979_fb1b);
        assert_eq!(
            [S[0][0], S[1][0], S[2][0], S[3][0]],
            [0xd131_0ba6, 0x4b7a_70e9, 0xe93d_5a68, 0x3a39_ce37]
        );
        assert_eq!(S[3][255], 0x3ac3_72e6);
    }

    #[test]
    fn known_hashes_verify_and_others_do_not() {
        for (password, stored) in VECTORS {
            let parsed = BcryptHash::parse(stored).unwrap();
            assert!(parsed.verify(password.as_bytes()), "{stored}");
            assert!(!parsed.verify(b"wrong"), "{stored}");
        }
    }

    #[test]
    fn weak_or_malformed_hashes_are_refused() {
        for bad in [
            "$apr1$abcdefgh$0123456789abcdefghijkl",
            "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "$2x$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
            "$2y$03$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
            "$2y$05$short",
            "plaintext",
        ] {
            assert!(BcryptHash::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
