//! Checksums and validity tests that turn a pattern match into a finding.

/// The decimal digits of `text`, as values 0–9.
pub(crate) fn digits(text: &[u8]) -> Vec<u8> {
    text.iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect()
}

/// The Luhn (mod 10) check over decimal digits.
pub(crate) fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !d.is_empty() && sum.is_multiple_of(10)
}

fn all_same(d: &[u8]) -> bool {
    d.windows(2).all(|w| w.first() == w.get(1))
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0u32, |n, &x| {
        n.saturating_mul(10).saturating_add(u32::from(x))
    })
}

fn valid_date(year: u32, month: u32, day: u32) -> bool {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// A payment card number: 13–19 digits, a known network prefix, Luhn.
pub(crate) fn card(d: &[u8]) -> bool {
    (13..=19).contains(&d.len())
        && (matches!(d.first(), Some(2..=6)) || (d.first() == Some(&1) && d.len() == 15))
        && !all_same(d)
        && luhn(d)
}

/// A US SSN written `AAA-GG-SSSS` (or with spaces or dots): no 000/666/9xx area, 00 group
/// or 0000 serial.
pub(crate) fn ssn(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = num(d.get(0..3).unwrap_or_default());
    let group = num(d.get(3..5).unwrap_or_default());
    let serial = num(d.get(5..9).unwrap_or_default());
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !all_same(d)
}

/// A Canadian SIN: 9 digits, Luhn, first digit not 0 or 8.
pub(crate) fn ca_sin(d: &[u8]) -> bool {
    d.len() == 9 && !matches!(d.first(), Some(0 | 8)) && !all_same(d) && luhn(d)
}

/// A UK NHS number: 10 digits, mod 11.
pub(crate) fn uk_nhs(d: &[u8]) -> bool {
    if d.len() != 10 || all_same(d) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .take(9)
        .enumerate()
        .map(|(i, &x)| u32::from(x) * (10 - i as u32))
        .sum();
    let check = (11 - sum % 11) % 11;
    check != 10 && d.get(9).map(|&c| u32::from(c)) == Some(check)
}

/// An Australian TFN: 9 digits, weighted mod 11.
pub(crate) fn au_tfn(d: &[u8]) -> bool {
    const W: [u32; 9] = [1, 4, 3, 7, 5, 8, 6, 9, 10];
    d.len() == 9
        && !all_same(d)
        && d.iter().zip(W).map(|(&x, w)| u32::from(x) * w).sum::<u32>() % 11 == 0
}

/// An Australian ABN: 11 digits, weighted mod 89.
pub(crate) fn au_abn(d: &[u8]) -> bool {
    const W: [u32; 11] = [10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19];
    if d.len() != 11 || d.first() == Some(&0) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .zip(W)
        .enumerate()
        .map(|(i, (&x, w))| (u32::from(x) - u32::from(i == 0)) * w)
        .sum();
    sum.is_multiple_of(89)
}

/// A Polish PESEL: 11 digits, a valid birth date, weighted check digit.
pub(crate) fn pl_pesel(d: &[u8]) -> bool {
    const W: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
    if d.len() != 11 {
        return false;
    }
    let yy = num(d.get(0..2).unwrap_or_default());
    let mm = num(d.get(2..4).unwrap_or_default());
    let dd = num(d.get(4..6).unwrap_or_default());
    let (century, month) = match mm {
        1..=12 => (1900, mm),
        21..=32 => (2000, mm - 20),
        41..=52 => (2100, mm - 40),
        61..=72 => (2200, mm - 60),
        81..=92 => (1800, mm - 80),
        _ => return false,
    };
    if !valid_date(century + yy, month, dd) {
        return false;
    }
    let sum: u32 = d.iter().zip(W).map(|(&x, w)| u32::from(x) * w).sum();
    d.get(10).map(|&c| u32::from(c)) == Some((10 - sum % 10) % 10)
}

/// A Turkish TC Kimlik number: 11 digits, first not 0, two check digits.
pub(crate) fn tr_tckn(d: &[u8]) -> bool {
    if d.len() != 11 || d.first() == Some(&0) {
        return false;
    }
    let v: Vec<i64> = d.iter().map(|&x| i64::from(x)).collect();
    let odd: i64 = v.iter().take(9).step_by(2).sum();
    let even: i64 = v.iter().skip(1).take(8).step_by(2).sum();
    let d10 = (odd * 7 - even).rem_euclid(10);
    let d11 = v.iter().take(10).sum::<i64>() % 10;
    v.get(9) == Some(&d10) && v.get(10) == Some(&d11)
}

const VERHOEFF_D: [[u8; 10]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
const VERHOEFF_P: [[u8; 10]; 8] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];

fn verhoeff(d: &[u8]) -> bool {
    let mut c = 0usize;
    for (i, &x) in d.iter().rev().enumerate() {
        let p = VERHOEFF_P
            .get(i % 8)
            .and_then(|row| row.get(usize::from(x)))
            .copied()
            .unwrap_or(0);
        c = VERHOEFF_D
            .get(c)
            .and_then(|row| row.get(usize::from(p)))
            .map_or(1, |&v| usize::from(v));
    }
    c == 0
}

/// An Indian Aadhaar number: 12 digits, first 2–9, Verhoeff.
pub(crate) fn in_aadhaar(d: &[u8]) -> bool {
    d.len() == 12 && matches!(d.first(), Some(2..=9)) && !all_same(d) && verhoeff(d)
}

/// A South African ID number: 13 digits `YYMMDD SSSS C A Z`, a valid date, citizenship 0 or
/// 1, the `A` digit 8 (9 before 1996), Luhn.
pub(crate) fn za_id(d: &[u8]) -> bool {
    if d.len() != 13 {
        return false;
    }
    let yy = num(d.get(0..2).unwrap_or_default());
    let mm = num(d.get(2..4).unwrap_or_default());
    let dd = num(d.get(4..6).unwrap_or_default());
    valid_date(2000 + yy, mm, dd)
        && matches!(d.get(10), Some(0 | 1))
        && matches!(d.get(11), Some(8 | 9))
        && luhn(d)
}

/// A Swedish personnummer (10 or 12 digits): a valid date (or coordination day + 60), Luhn
/// over the last 10 digits.
pub(crate) fn se_personnummer(d: &[u8]) -> bool {
    let ten = match d.len() {
        10 => d,
        12 => {
            if !matches!(d.get(0..2), Some([1, 8 | 9]) | Some([2, 0])) {
                return false;
            }
            d.get(2..).unwrap_or_default()
        }
        _ => return false,
    };
    let yy = num(ten.get(0..2).unwrap_or_default());
    let mm = num(ten.get(2..4).unwrap_or_default());
    let mut dd = num(ten.get(4..6).unwrap_or_default());
    if dd > 60 {
        dd -= 60;
    }
    valid_date(2000 + yy, mm, dd) && luhn(ten)
}

/// A Korean resident registration number `YYMMDD-GNNNNNN`: a valid date and a citizen gender
/// digit (1–4). The check digit is not tested: numbers issued since October 2020 have none.
pub(crate) fn kr_rrn(d: &[u8]) -> bool {
    if d.len() != 13 {
        return false;
    }
    let yy = num(d.get(0..2).unwrap_or_default());
    let mm = num(d.get(2..4).unwrap_or_default());
    let dd = num(d.get(4..6).unwrap_or_default());
    let century = match d.get(6) {
        Some(1 | 2) => 1900,
        Some(3 | 4) => 2000,
        _ => return false,
    };
    valid_date(century + yy, mm, dd)
}

/// A Finnish henkilötunnus `DDMMYYCZZZQ`.
pub(crate) fn fi_hetu(text: &[u8]) -> bool {
    const CHECK: &[u8; 31] = b"0123456789ABCDEFHJKLMNPRSTUVWXY";
    if text.len() != 11 {
        return false;
    }
    let century = match text.get(6).map(u8::to_ascii_uppercase) {
        Some(b'+') => 1800,
        Some(b'-' | b'Y' | b'X' | b'W' | b'V' | b'U') => 1900,
        Some(b'A' | b'B' | b'C' | b'D' | b'E' | b'F') => 2000,
        _ => return false,
    };
    let date = digits(text.get(0..6).unwrap_or_default());
    let serial = digits(text.get(7..10).unwrap_or_default());
    if date.len() != 6 || serial.len() != 3 {
        return false;
    }
    let dd = num(date.get(0..2).unwrap_or_default());
    let mm = num(date.get(2..4).unwrap_or_default());
    let yy = num(date.get(4..6).unwrap_or_default());
    if !valid_date(century + yy, mm, dd) || num(&serial) < 2 {
        return false;
    }
    let n = u64::from(num(&date)) * 1000 + u64::from(num(&serial));
    let expected = usize::try_from(n % 31).ok().and_then(|i| CHECK.get(i));
    expected == text.get(10).map(u8::to_ascii_uppercase).as_ref()
}

/// A Spanish DNI/NIF (`12345678Z`) or NIE (`X1234567L`).
pub(crate) fn es_nif(text: &[u8]) -> bool {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let t: Vec<u8> = text
        .iter()
        .filter(|&&b| b != b'-')
        .map(u8::to_ascii_uppercase)
        .collect();
    let Some((&letter, body)) = t.split_last() else {
        return false;
    };
    let (prefix, rest) = match body.first() {
        Some(b'X') => (0, body.get(1..).unwrap_or_default()),
        Some(b'Y') => (1, body.get(1..).unwrap_or_default()),
        Some(b'Z') => (2, body.get(1..).unwrap_or_default()),
        _ => (0, body),
    };
    let nie = rest.len() != body.len();
    if !rest.iter().all(u8::is_ascii_digit)
        || !(7..=8).contains(&rest.len())
        || (nie && rest.len() != 7)
    {
        return false;
    }
    let n = prefix * 10_u32.pow(u32::try_from(rest.len()).unwrap_or(0)) + num(&digits(rest));
    usize::try_from(n % 23).ok().and_then(|i| LETTERS.get(i)) == Some(&letter)
}

/// An Italian codice fiscale (16 characters, check letter).
pub(crate) fn it_fiscal(text: &[u8]) -> bool {
    const ODD: [u32; 36] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, // 0-9
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23, // A-Z
    ];
    if text.len() != 16 {
        return false;
    }
    let idx = |b: u8| -> Option<usize> {
        match b.to_ascii_uppercase() {
            c @ b'0'..=b'9' => Some(usize::from(c - b'0')),
            c @ b'A'..=b'Z' => Some(usize::from(c - b'A') + 10),
            _ => None,
        }
    };
    let mut sum = 0u32;
    for (i, &b) in text.iter().take(15).enumerate() {
        let Some(k) = idx(b) else { return false };
        sum += if i % 2 == 0 {
            ODD.get(k).copied().unwrap_or(0)
        } else if k < 10 {
            k as u32
        } else {
            (k - 10) as u32
        };
    }
    text.get(15).map(u8::to_ascii_uppercase) == Some(b'A' + (sum % 26) as u8)
}

/// An IBAN: country, check digits, mod 97 == 1.
pub(crate) fn iban(text: &[u8]) -> bool {
    let t: Vec<u8> = text
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(u8::to_ascii_uppercase)
        .collect();
    if !(15..=34).contains(&t.len()) {
        return false;
    }
    let (head, tail) = t.split_at(4);
    let mut rem = 0u32;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A Base58Check Bitcoin address (P2PKH `1...`, P2SH `3...`).
pub(crate) fn btc_base58(text: &[u8]) -> bool {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut bytes: Vec<u8> = Vec::with_capacity(25);
    for &c in text {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            return false;
        };
        let mut carry = v as u32;
        for b in bytes.iter_mut().rev() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = text.iter().take_while(|&&c| c == b'1').count();
    let mut full = vec![0u8; zeros];
    full.extend(bytes);
    if full.len() != 25 {
        return false;
    }
    let (payload, check) = full.split_at(21);
    sha256(&sha256(payload)).get(..4) == Some(check)
}

/// A bech32/bech32m segwit address (`bc1...`).
pub(crate) fn bech32(text: &[u8]) -> bool {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let lower: Vec<u8> = text.iter().map(u8::to_ascii_lowercase).collect();
    let Some(sep) = lower.iter().rposition(|&b| b == b'1') else {
        return false;
    };
    let (hrp, data) = (
        lower.get(..sep).unwrap_or_default(),
        lower.get(sep + 1..).unwrap_or_default(),
    );
    if data.len() < 6 {
        return false;
    }
    let mut values = Vec::with_capacity(hrp.len() * 2 + 1 + data.len());
    values.extend(hrp.iter().map(|&c| u32::from(c >> 5)));
    values.push(0);
    values.extend(hrp.iter().map(|&c| u32::from(c & 31)));
    for &c in data {
        let Some(v) = CHARSET.iter().position(|&a| a == c) else {
            return false;
        };
        values.push(v as u32);
    }
    let mut chk: u32 = 1;
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ v;
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk == 1 || chk == 0x2bc8_30a3
}

/// An IPv4 address with every octet 0–255 and no leading zeros beyond one digit.
pub(crate) fn ipv4(text: &[u8]) -> bool {
    std::str::from_utf8(text)
        .ok()
        .is_some_and(|s| s.parse::<std::net::Ipv4Addr>().is_ok())
}

/// An IPv6 address (zone id allowed).
pub(crate) fn ipv6(text: &[u8]) -> bool {
    let s = std::str::from_utf8(text).unwrap_or_default();
    let s = s.split('%').next().unwrap_or_default();
    s.len() > 2 && s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// A MAC address: one separator style, not all-zero or broadcast.
pub(crate) fn mac(text: &[u8]) -> bool {
    let seps: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_hexdigit())
        .collect();
    let consistent = seps.windows(2).all(|w| w.first() == w.get(1));
    let hex: Vec<u8> = text
        .iter()
        .copied()
        .filter(u8::is_ascii_hexdigit)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    consistent
        && hex.len() == 12
        && !hex.iter().all(|&b| b == b'0')
        && !hex.iter().all(|&b| b == b'f')
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(text: &[u8]) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in text {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = text.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A token that looks random enough to be a real credential: not a placeholder
/// (`xxxx`, `****`, `<token>`, `${VAR}`), entropy of at least `min_entropy` bits per byte.
pub(crate) fn random_token(text: &[u8], min_entropy: f64) -> bool {
    let longest_run = text
        .chunk_by(|a, b| a == b)
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    longest_run < 6 && entropy(text) >= min_entropy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Vec<u8> {
        digits(s.as_bytes())
    }

    #[test]
    fn checksums() {
        assert!(card(&d("4111 1111 1111 1111")));
        assert!(!card(&d("4111 1111 1111 1112")));
        assert!(ssn(&d("078-05-1123")));
        assert!(!ssn(&d("666-05-1123")));
        assert!(!ssn(&d("078-00-1123")));
        assert!(ca_sin(&d("130 692 544")));
        assert!(!ca_sin(&d("130 692 545")));
        assert!(uk_nhs(&d("401 023 2137")));
        assert!(!uk_nhs(&d("401 023 2138")));
        assert!(au_tfn(&d("876 543 210")));
        assert!(au_abn(&d("51 824 753 556")));
        assert!(!au_abn(&d("52 824 753 556")));
        assert!(pl_pesel(&d("44051401458")));
        assert!(!pl_pesel(&d("44051401459")));
        assert!(tr_tckn(&d("10000000146")));
        assert!(!tr_tckn(&d("10000000145")));
        assert!(in_aadhaar(&d("3123 4567 8909")));
        assert!(!in_aadhaar(&d("1234 5678 9012")));
        assert!(za_id(&d("8001015009087")));
        assert!(!za_id(&d("8001015009086")));
        assert!(se_personnummer(&d("198712202384")));
        assert!(se_personnummer(&d("871220-2384")));
        assert!(kr_rrn(&d("960121-1234567")));
        assert!(!kr_rrn(&d("001332-1234567")));
        assert!(fi_hetu(b"131052-308T"));
        assert!(!fi_hetu(b"111111-111A"));
        assert!(es_nif(b"12345678Z"));
        assert!(!es_nif(b"12345678A"));
        assert!(es_nif(b"X9613851N"));
        assert!(!es_nif(b"Y8063915Q"));
        assert!(iban(b"DE89 3704 0044 0532 0130 00"));
        assert!(!iban(b"DE89 3704 0044 0532 0130 01"));
        assert!(btc_base58(b"16Yeky6GMjeNkAiNcBY7ZhrLoMSgg1BoyZ"));
        assert!(!btc_base58(b"16Yeky6GMjeNkAiNcBY7ZhrLoMSgg1BoyY"));
        assert!(bech32(b"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"));
        assert!(!bech32(b"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdp"));
        assert!(mac(b"00:1A:2B:3C:4D:5E"));
        assert!(!mac(b"10:2F:33-AC-29-C3"));
        assert!(!mac(b"FF:FF:FF:FF:FF:FF"));
        assert!(random_token(
            b"bP88Q~rcBcYjzzOhg1Hnn76Wm3jGgakZiZ.8vMgR",
            3.5
        ));
        assert!(!random_token(
            b"bP88Q~xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            3.5
        ));
    }
}
