//! Session documents as a web framework stores them: JSON of 2-8 KiB with a
//! user, request headers, flags, a cart and a history of page views. Names
//! and paths repeat and tokens are hex, so the documents compress the way
//! real ones do (LZ4 takes them to about 0.55 of their size), unlike the
//! random bytes of `sessions`.
//!
//! Every field an update touches has a fixed width, so an update rewrites
//! bytes in place and a document keeps its length: the version (20 digits
//! at [`VERSION_AT`]), `last_seen`, and one history entry (its time, path
//! and referrer token), chosen by the key and the new version.

use super::hash3;

/// Where the version's 20 digits start: after `{"v":"`.
const VERSION_AT: usize = 6;
const VERSION_DIGITS: usize = 20;
/// The history array's opening; its entries all have [`ENTRY_LEN`] bytes.
const HISTORY: &[u8] = b"\"history\":[";
/// `{"at":"2026-11-30T10:00:00Z","path":"/xxxxxxxxxx/xxxxxxxxxx/000000","ref":"0123456789abcdef"},`
const ENTRY_LEN: usize = 94;
const LAST_SEEN: &[u8] = b"\"last_seen\":\"";

const WORDS: [&str; 16] = [
    "products", "account", "checkout", "search", "settings", "orders", "support", "catalog",
    "wishlist", "reviews", "shipping", "payments", "profile", "messages", "returns", "offers",
];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
];
const LOCALES: [&str; 4] = ["en-US", "de-DE", "fr-FR", "ja-JP"];

fn word(h: u64) -> &'static str {
    WORDS[(h % WORDS.len() as u64) as usize]
}

/// `YYYY-MM-DDTHH:MM:SSZ` (20 bytes) for a time in November 2026.
fn time(h: u64) -> String {
    let s = h % (30 * 86_400);
    format!(
        "2026-11-{:02}T{:02}:{:02}:{:02}Z",
        1 + s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// One history entry: exactly [`ENTRY_LEN`] bytes, trailing comma included.
fn entry(h: u64) -> String {
    let e = format!(
        "{{\"at\":\"{}\",\"path\":\"/{:<10.10}/{:<10.10}/{:06}\",\"ref\":\"{:016x}\"}},",
        time(h),
        word(h >> 8),
        word(h >> 16),
        (h >> 24) % 1_000_000,
        hash3(h, 7, 7)
    );
    debug_assert_eq!(e.len(), ENTRY_LEN);
    e
}

/// Session `i`'s first document, about `size` bytes (at least 1 KiB).
pub(crate) fn initial(seed: u64, i: usize, size: usize) -> Vec<u8> {
    let h = |n: u64| hash3(seed, 60 + n, i as u64);
    let user = h(0) % 1_000_000;
    let mut d = format!(
        "{{\"v\":\"{:0w$}\",\"id\":\"session:{i:08}\",\"user\":{{\"id\":{user},\
         \"name\":\"user{user}\",\"email\":\"user{user}@example.com\",\"locale\":\"{}\",\
         \"tz\":\"Europe/Berlin\"}},\"csrf\":\"{:016x}{:016x}\",\"ua\":\"{}\",\
         \"ip\":\"10.{}.{}.{}\",\"flags\":{{\"beta\":{},\"dark_mode\":{},\"consent\":true}},\
         \"last_seen\":\"{}\",\"cart\":[",
        0,
        LOCALES[(h(1) % 4) as usize],
        h(2),
        h(3),
        AGENTS[(h(4) % 4) as usize],
        h(5) % 256,
        h(6) % 256,
        h(7) % 256,
        h(8) % 2 == 0,
        h(9) % 3 == 0,
        time(h(10)),
        w = VERSION_DIGITS,
    );
    for n in 0..h(11) % 4 {
        let c = h(20 + n);
        d.push_str(&format!(
            "{{\"sku\":\"SKU-{:06}\",\"qty\":{},\"price_cents\":{},\"title\":\"{} {}\"}},",
            c % 1_000_000,
            1 + c % 3,
            100 + c % 20_000,
            word(c >> 8),
            word(c >> 16)
        ));
    }
    if d.ends_with(',') {
        d.pop();
    }
    d.push_str("],");
    d.push_str(std::str::from_utf8(HISTORY).unwrap_or_default());
    let mut n = 0;
    while d.len() + ENTRY_LEN + 2 <= size.max(1024) {
        d.push_str(&entry(h(100 + n)));
        n += 1;
    }
    d.pop();
    d.push_str("]}");
    d.into_bytes()
}

fn find(doc: &[u8], what: &[u8]) -> Option<usize> {
    doc.windows(what.len())
        .position(|w| w == what)
        .map(|p| p + what.len())
}

/// One update of session `i`'s document: version + 1, `last_seen` and one
/// history entry rewritten (which and with what depends only on the key
/// and the new version). A document that is not one of these is left as it
/// is.
pub(crate) fn update(seed: u64, i: usize, doc: &mut [u8]) {
    let Some(digits) = doc.get(VERSION_AT..VERSION_AT + VERSION_DIGITS) else {
        return;
    };
    let Some(version) = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let version = version + 1;
    let h = hash3(seed, 70 + i as u64, version);
    doc[VERSION_AT..VERSION_AT + VERSION_DIGITS]
        .copy_from_slice(format!("{version:0VERSION_DIGITS$}").as_bytes());
    if let Some(at) = find(doc, LAST_SEEN) {
        doc[at..at + 20].copy_from_slice(time(h).as_bytes());
    }
    if let Some(start) = find(doc, HISTORY) {
        // Every entry but the last ends with its comma; the last with `]}`.
        let entries = (doc.len() - start + 1) / ENTRY_LEN;
        if entries > 0 {
            let at = start + (h % entries as u64) as usize * ENTRY_LEN;
            let e = entry(h >> 1);
            doc[at..at + ENTRY_LEN - 1].copy_from_slice(&e.as_bytes()[..ENTRY_LEN - 1]);
        }
    }
}

/// The version [`update`] last wrote (0 for a first document).
#[cfg(test)]
fn version(doc: &[u8]) -> Option<u64> {
    std::str::from_utf8(doc.get(VERSION_AT..VERSION_AT + VERSION_DIGITS)?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_json_of_their_size_and_updates_keep_them_so() {
        for i in 0..200 {
            let size = 2048 + i * 30;
            let mut d = initial(9, i, size);
            assert!(
                d.len() <= size && d.len() + 2 * ENTRY_LEN > size,
                "{}",
                d.len()
            );
            let len = d.len();
            let mut before = d.clone();
            for v in 1..=5 {
                update(9, i, &mut d);
                assert_eq!(d.len(), len);
                assert_ne!(d, before);
                assert_eq!(version(&d), Some(v));
                before.clone_from(&d);
            }
            let text = std::str::from_utf8(&d).unwrap();
            assert!(text.starts_with("{\"v\":\"0000") && text.ends_with("]}"));
            // Balanced braces and brackets, as JSON without strings that
            // contain them is.
            let depth = text.bytes().fold(0i32, |n, b| match b {
                b'{' | b'[' => n + 1,
                b'}' | b']' => n - 1,
                _ => n,
            });
            assert_eq!(depth, 0, "{text}");
        }
        // The same key, seed and version give the same document.
        let (mut a, mut b) = (initial(3, 7, 4000), initial(3, 7, 4000));
        update(3, 7, &mut a);
        update(3, 7, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn a_foreign_document_is_left_as_it_is() {
        let mut d = b"not a session".to_vec();
        update(1, 1, &mut d);
        assert_eq!(d, b"not a session");
    }
}
