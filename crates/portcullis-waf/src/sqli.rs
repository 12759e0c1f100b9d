//! libinjection's SQL-injection detector (`@detectSQLi`), reimplemented for speed.
//!
//! libinjection reads a value as SQL in up to five contexts (as it is, and as if it followed a
//! single or a double quote, each in ANSI or MySQL comment syntax), folds the first tokens
//! into a fingerprint of at most five token types, and reports an injection when that
//! fingerprint is on its list (and no false-positive rule clears it). This module gives the
//! same verdict as the `libinjectionrs` port CRS has been run with here, quirks included, so
//! the regression results do not move. It differs in cost only: keywords are found by
//! hash without allocating, tokens live on the stack, and nothing is formatted.
//!
//! The keyword and fingerprint table and the character classes are `libinjectionrs`'s own
//! (its public data). The tests compare the verdict and every context's fingerprint with
//! `libinjectionrs` on attack corpora, CRS's payloads, and generated SQL-like text.

use std::collections::HashMap;
use std::sync::OnceLock;

use libinjectionrs::sqli::sqli_data::{CHAR_MAP, CharType, SQL_KEYWORDS};

/// The most tokens a fingerprint has.
const MAX_TOKENS: usize = 5;
/// A token keeps at most this many bytes of its text, less one.
const TOKEN_SIZE: usize = 32;

// Token types, as the characters of libinjection's fingerprints.
const NONE: u8 = 0;
const KEYWORD: u8 = b'k';
const UNION: u8 = b'U';
const GROUP: u8 = b'B';
const EXPRESSION: u8 = b'E';
const SQLTYPE: u8 = b't';
const FUNCTION: u8 = b'f';
const BAREWORD: u8 = b'n';
const NUMBER: u8 = b'1';
const VARIABLE: u8 = b'v';
const STRING: u8 = b's';
const OPERATOR: u8 = b'o';
const LOGIC_OPERATOR: u8 = b'&';
const COMMENT: u8 = b'c';
const COLLATE: u8 = b'A';
const LEFT_PARENS: u8 = b'(';
const RIGHT_PARENS: u8 = b')';
const LEFT_BRACE: u8 = b'{';
const RIGHT_BRACE: u8 = b'}';
const DOT: u8 = b'.';
const COMMA: u8 = b',';
const COLON: u8 = b':';
const SEMICOLON: u8 = b';';
const TSQL: u8 = b'T';
const UNKNOWN: u8 = b'?';
const EVIL: u8 = b'X';
const FINGERPRINT: u8 = b'F';
const BACKSLASH: u8 = b'\\';

const SINGLE: u8 = b'\'';
const DOUBLE: u8 = b'"';
const TICK: u8 = b'`';

/// How a context reads the value: the quote it is taken to follow (or none), and whether
/// comments follow MySQL (`#` starts one; `--x` does not) rather than ANSI.
#[derive(Clone, Copy)]
struct Mode {
    quote: u8,
    mysql: bool,
}

/// Whether libinjection reads `input` as SQL injection.
pub(crate) fn is_sqli(input: &[u8]) -> bool {
    if input.is_empty() {
        return false;
    }
    let mut ctx = Context::new(input);
    ctx.ansi_then_mysql(NONE)
        || (memchr::memchr(SINGLE, input).is_some() && ctx.ansi_then_mysql(SINGLE))
        || (memchr::memchr(DOUBLE, input).is_some()
            && ctx.injection(Mode {
                quote: DOUBLE,
                mysql: true,
            }))
}

/// The keyword table: a word (upper case) to its type (`libinjectionrs`'s table, whose
/// `n` entries and absent words are barewords); fingerprints are entries `0` + the
/// fingerprint in upper case, of type `F`.
fn keywords() -> &'static Keywords {
    static TABLE: OnceLock<Keywords> = OnceLock::new();
    TABLE.get_or_init(|| {
        let map: HashMap<&'static [u8], u8, _> = SQL_KEYWORDS
            .iter()
            .map(|k| (k.word.as_bytes(), k.token_type))
            .collect();
        let longest = map.keys().map(|k| k.len()).max().unwrap_or(0);
        (map, longest)
    })
}

/// The keyword table, and the length of its longest word.
type Keywords = (
    HashMap<&'static [u8], u8, foldhash::fast::RandomState>,
    usize,
);

/// The type of `word` (any ASCII case) in the keyword table: [`BAREWORD`] when it is not
/// there, as `libinjectionrs` reads it.
fn lookup(word: &[u8]) -> u8 {
    let (map, longest) = keywords();
    if word.len() > *longest {
        return BAREWORD;
    }
    let mut upper = [0_u8; 64];
    let Some(slot) = upper.get_mut(..word.len()) else {
        return BAREWORD;
    };
    slot.copy_from_slice(word);
    slot.make_ascii_uppercase();
    match map.get(&*slot) {
        Some(&t) if b"kfUETto&v1ABF".contains(&t) => t,
        _ => BAREWORD,
    }
}

/// Whether `word` (any case) is in libinjection's keyword table with a type other than
/// bareword.
pub(crate) fn is_keyword(word: &[u8]) -> bool {
    lookup(word) != BAREWORD
}

#[derive(Clone, Copy)]
struct Token {
    kind: u8,
    len: usize,
    val: [u8; TOKEN_SIZE],
    str_open: u8,
    str_close: u8,
}

const EMPTY: Token = Token {
    kind: NONE,
    len: 0,
    val: [0; TOKEN_SIZE],
    str_open: NONE,
    str_close: NONE,
};

impl Token {
    /// Sets the token to `kind` with (up to [`TOKEN_SIZE`] - 1 bytes of) `text`.
    fn assign(&mut self, kind: u8, text: &[u8]) {
        let len = text.len().min(TOKEN_SIZE - 1);
        self.kind = kind;
        self.len = len;
        self.val = [0; TOKEN_SIZE];
        if let (Some(dst), Some(src)) = (self.val.get_mut(..len), text.get(..len)) {
            dst.copy_from_slice(src);
        }
    }

    fn assign_char(&mut self, kind: u8, ch: u8) {
        self.kind = kind;
        self.len = 1;
        let [first, second, ..] = &mut self.val;
        *first = ch;
        *second = 0;
    }

    fn text(&self) -> &[u8] {
        self.val.get(..self.len).unwrap_or_default()
    }

    /// Whether the text equals `upper` (upper case ASCII) without regard to ASCII case.
    fn is(&self, upper: &[u8]) -> bool {
        self.text().eq_ignore_ascii_case(upper)
    }

    fn first(&self) -> u8 {
        self.val.first().copied().unwrap_or(0)
    }

    fn is_unary_op(&self) -> bool {
        if self.kind != OPERATOR {
            return false;
        }
        match self.text() {
            [c] => matches!(c, b'+' | b'-' | b'!' | b'~'),
            b"!!" => true,
            t => t.eq_ignore_ascii_case(b"NOT"),
        }
    }

    fn is_arithmetic_op(&self) -> bool {
        self.kind == OPERATOR && matches!(self.text(), [b'*' | b'/' | b'-' | b'+' | b'%'])
    }
}

/// The bytes that end a word, as a table.
const WORD_END: [bool; 256] = byte_table(b" []{}<>:\\?=@!#~+-*/&|^%(),';\t\n\x0b\x0c\r\"\xa0\x00");
/// The bytes that end a variable's name.
const VAR_END: [bool; 256] = byte_table(b" <>:\\?=@!#~+-*/&|^%(),;'\t\n\x0b\x0c\r`\"");

#[allow(
    clippy::indexing_slicing,
    reason = "a constant table: `i` is below the length, and a byte indexes 256 entries"
)]
const fn byte_table(bytes: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
}

fn is_white(ch: u8) -> bool {
    matches!(ch, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0 | 0x00)
}

/// The first place in `hay` where `a` is followed by `b`.
fn find2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    memchr::memmem::find(hay, &[a, b])
}

/// The tokenizer of one context.
struct Tokenizer<'a> {
    s: &'a [u8],
    mode: Mode,
    pos: usize,
    current: Token,
    comment_ddx: u32,
    comment_hash: u32,
}

impl<'a> Tokenizer<'a> {
    fn new(s: &'a [u8], mode: Mode) -> Self {
        Self {
            s,
            mode,
            pos: 0,
            current: EMPTY,
            comment_ddx: 0,
            comment_hash: 0,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        self.s.get(from..to).unwrap_or_default()
    }

    /// The next token, if any.
    fn next(&mut self) -> Option<Token> {
        let len = self.s.len();
        if len == 0 || self.pos >= len {
            return None;
        }
        self.current = EMPTY;
        if self.pos == 0 && self.mode.quote != NONE {
            // The value is read as if it followed the context's quote: its text up to that
            // quote is a string.
            self.pos = self.string_core(0, self.mode.quote, 0);
            return Some(self.current);
        }
        while self.pos < len {
            let ch = self.at(self.pos);
            self.pos = self.dispatch(ch);
            if self.current.kind != NONE {
                return Some(self.current);
            }
        }
        None
    }

    fn dispatch(&mut self, ch: u8) -> usize {
        match CHAR_MAP
            .get(usize::from(ch))
            .copied()
            .unwrap_or(CharType::Other)
        {
            CharType::White => self.pos + 1,
            CharType::Bang | CharType::Op2 => self.operator2(),
            CharType::String => self.string(),
            CharType::Hash => self.hash(),
            CharType::Money => self.money(),
            CharType::Op1 | CharType::Unary => self.operator1(),
            CharType::LeftParens
            | CharType::RightParens
            | CharType::Comma
            | CharType::Semicolon
            | CharType::LeftBrace
            | CharType::RightBrace => {
                self.current.assign_char(ch, ch);
                self.pos + 1
            }
            CharType::Dash => self.dash(),
            CharType::Number => self.number(),
            CharType::Slash => self.slash(),
            CharType::Variable => self.var(),
            CharType::Word => self.word(),
            CharType::BString => self.bstring(),
            CharType::EString => self.estring(),
            CharType::NQString => self.nqstring(),
            CharType::QString => self.qstring_core(0),
            CharType::UString => self.ustring(),
            CharType::XString => self.xstring(),
            CharType::BWord => self.bword(),
            CharType::Backslash => self.backslash(),
            CharType::Tick => self.tick(),
            CharType::Other => {
                self.current.assign_char(UNKNOWN, ch);
                self.pos + 1
            }
        }
    }

    fn operator1(&mut self) -> usize {
        let ch = self.at(self.pos);
        self.current.assign_char(OPERATOR, ch);
        self.pos + 1
    }

    fn operator2(&mut self) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        if pos + 1 >= len {
            return self.operator1();
        }
        if pos + 2 < len && self.slice(pos, pos + 3) == b"<=>" {
            self.current.assign(OPERATOR, b"<=>");
            return pos + 3;
        }
        let two = self.slice(pos, pos + 2);
        let kind = lookup(two);
        if kind != BAREWORD {
            let kind = if kind == LOGIC_OPERATOR {
                LOGIC_OPERATOR
            } else {
                OPERATOR
            };
            self.current.assign(kind, two);
            return pos + 2;
        }
        if self.at(pos) == b':' {
            self.current.assign_char(COLON, b':');
            pos + 1
        } else {
            self.operator1()
        }
    }

    fn hash(&mut self) -> usize {
        self.comment_hash += 1;
        if self.mode.mysql {
            self.comment_hash += 1;
            self.eol_comment()
        } else {
            self.current.assign_char(OPERATOR, b'#');
            self.pos + 1
        }
    }

    fn dash(&mut self) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        if pos + 1 < len && self.at(pos + 1) == b'-' {
            if pos + 2 >= len || is_white(self.at(pos + 2)) {
                return self.eol_comment();
            }
            self.comment_ddx += 1;
            if !self.mode.mysql {
                return self.eol_comment();
            }
        }
        self.current.assign_char(OPERATOR, b'-');
        pos + 1
    }

    fn eol_comment(&mut self) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        let rest = self.slice(pos, len);
        match memchr::memchr(b'\n', rest) {
            Some(n) => {
                self.current.assign(COMMENT, self.slice(pos, pos + n));
                pos + n + 1
            }
            None => {
                self.current.assign(COMMENT, rest);
                len
            }
        }
    }

    fn slash(&mut self) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        if pos + 1 == len || self.at(pos + 1) != b'*' {
            self.current.assign_char(OPERATOR, b'/');
            return pos + 1;
        }
        // A C comment: evil when it nests another, or is MySQL's `/*!`.
        let inside = if pos + 2 < len {
            self.slice(pos + 2, len)
        } else {
            &[]
        };
        let close = find2(inside, b'*', b'/');
        let clen = close.map_or(len - pos, |c| c + 4);
        let mut kind = COMMENT;
        if let Some(c) = close
            && find2(
                inside.get(..(c + 1).min(inside.len())).unwrap_or_default(),
                b'/',
                b'*',
            )
            .is_some()
        {
            kind = EVIL;
        }
        if pos + 2 < len && self.at(pos + 2) == b'!' {
            kind = EVIL;
        }
        self.current.assign(kind, self.slice(pos, pos + clen));
        pos + clen
    }

    fn backslash(&mut self) -> usize {
        let pos = self.pos;
        if pos + 1 < self.s.len() && self.at(pos + 1) == b'N' {
            self.current.assign(NUMBER, self.slice(pos, pos + 2));
            pos + 2
        } else {
            self.current.assign_char(BACKSLASH, b'\\');
            pos + 1
        }
    }

    fn string(&mut self) -> usize {
        let delim = self.at(self.pos);
        self.string_core(self.pos, delim, 1)
    }

    /// A string from `pos + offset` to the next `delim` that is neither escaped by an odd
    /// run of backslashes nor doubled; `offset` 0 is the context's leading quote.
    fn string_core(&mut self, pos: usize, delim: u8, offset: usize) -> usize {
        let len = self.s.len();
        let start = pos + offset;
        let mut from = start;
        let end = loop {
            let Some(found) = self
                .s
                .get(from..)
                .and_then(|rest| memchr::memchr(delim, rest))
            else {
                break None;
            };
            let at = from + found;
            let backslashes = self
                .slice(start, at)
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count();
            if backslashes % 2 == 1 {
                from = at + 1;
            } else if at + 1 < len && self.at(at + 1) == delim {
                from = at + 2;
            } else {
                break Some(at);
            }
        };
        let open = if offset > 0 { delim } else { NONE };
        match end {
            Some(at) => {
                self.current.assign(STRING, self.slice(start, at));
                self.current.str_open = open;
                self.current.str_close = delim;
                at + 1
            }
            None => {
                self.current.assign(STRING, self.slice(start, len));
                self.current.str_open = open;
                self.current.str_close = NONE;
                len
            }
        }
    }

    fn estring(&mut self) -> usize {
        let pos = self.pos;
        if pos + 2 >= self.s.len() || self.at(pos + 1) != SINGLE {
            return self.word();
        }
        self.string_core(pos, SINGLE, 2)
    }

    fn ustring(&mut self) -> usize {
        let pos = self.pos;
        if pos + 2 < self.s.len() && self.at(pos + 1) == b'&' && self.at(pos + 2) == SINGLE {
            self.pos += 2;
            let next = self.string();
            self.current.str_open = b'u';
            if self.current.str_close == SINGLE {
                self.current.str_close = b'u';
            }
            next
        } else {
            self.word()
        }
    }

    fn nqstring(&mut self) -> usize {
        let pos = self.pos;
        if pos + 2 < self.s.len() && self.at(pos + 1) == SINGLE {
            return self.estring();
        }
        self.qstring_core(1)
    }

    /// Oracle's `q'<delim>...<delim>'` string.
    fn qstring_core(&mut self, offset: usize) -> usize {
        let pos = self.pos + offset;
        let len = self.s.len();
        if pos >= len
            || !matches!(self.at(pos), b'q' | b'Q')
            || pos + 2 >= len
            || self.at(pos + 1) != SINGLE
        {
            return self.word();
        }
        let open = self.at(pos + 2);
        // (Signed, as in C: bytes from 0x80 do not open one.)
        if !(33..0x80).contains(&open) {
            return self.word();
        }
        let close = match open {
            b'(' => b')',
            b'[' => b']',
            b'{' => b'}',
            b'<' => b'>',
            other => other,
        };
        let start = pos + 3;
        let end = find2(self.slice(start, len), close, SINGLE);
        self.delimited(b'q', start, end, 2)
    }

    /// A string of kind `open` from `start` to `start + end` (then a closing delimiter of
    /// `close_len` bytes), or to the end of the value when `end` is `None`.
    fn delimited(&mut self, open: u8, start: usize, end: Option<usize>, close_len: usize) -> usize {
        let len = self.s.len();
        let stop = end.map_or(len, |n| start + n);
        self.current.assign(STRING, self.slice(start, stop));
        self.current.str_open = open;
        self.current.str_close = if end.is_some() { open } else { NONE };
        if end.is_some() { stop + close_len } else { len }
    }

    /// `b'0101'` and `x'00ff'`.
    fn digits_string(&mut self, digit: fn(u8) -> bool) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        if pos + 2 >= len || self.at(pos + 1) != SINGLE {
            return self.word();
        }
        let end = pos
            + 2
            + self
                .slice(pos + 2, len)
                .iter()
                .take_while(|&&b| digit(b))
                .count();
        if end >= len || self.at(end) != SINGLE {
            return self.word();
        }
        self.current.assign(NUMBER, self.slice(pos, end + 1));
        end + 1
    }

    fn bstring(&mut self) -> usize {
        self.digits_string(|b| b == b'0' || b == b'1')
    }

    fn xstring(&mut self) -> usize {
        self.digits_string(|b| b.is_ascii_hexdigit())
    }

    /// SQL Server's `[bracketed words]`.
    fn bword(&mut self) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        let end = memchr::memchr(b']', self.slice(pos, len)).map_or(len, |n| pos + n + 1);
        self.current.assign(BAREWORD, self.slice(pos, end));
        end
    }

    fn word(&mut self) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        let rest = self.slice(pos, len);
        let wlen = rest
            .iter()
            .position(|&b| WORD_END.get(usize::from(b)).copied().unwrap_or(false))
            .unwrap_or(rest.len());
        let word = rest.get(..wlen).unwrap_or_default();
        self.current.assign(BAREWORD, word);
        // A keyword before a `.` or a backtick ends the word there (`SELECT.1`).
        for (i, _) in word
            .iter()
            .enumerate()
            .filter(|(_, b)| matches!(b, b'.' | b'`'))
        {
            let head = word.get(..i).unwrap_or_default();
            let kind = lookup(head);
            if kind != BAREWORD {
                self.current = EMPTY;
                self.current.assign(kind, head);
                return pos + i;
            }
        }
        if wlen < TOKEN_SIZE {
            self.current.kind = lookup(word);
        }
        pos + wlen
    }

    /// MySQL's backtick names: a function's name, or else a bareword.
    fn tick(&mut self) -> usize {
        let next = self.string_core(self.pos, TICK, 1);
        self.current.kind = if lookup(self.current.text()) == FUNCTION {
            FUNCTION
        } else {
            BAREWORD
        };
        next
    }

    fn var(&mut self) -> usize {
        let (start, len) = (self.pos, self.s.len());
        let mut pos = start + 1;
        if pos < len && self.at(pos) == b'@' {
            pos += 1;
        }
        if pos < len {
            match self.at(pos) {
                TICK => {
                    self.pos = pos;
                    let next = self.tick();
                    self.current.kind = VARIABLE;
                    return next;
                }
                SINGLE | DOUBLE => {
                    self.pos = pos;
                    let next = self.string();
                    self.current.kind = VARIABLE;
                    return next;
                }
                _ => {}
            }
        }
        let name = self
            .slice(pos, len)
            .iter()
            .position(|&b| VAR_END.get(usize::from(b)).copied().unwrap_or(false))
            .unwrap_or(len - pos.min(len));
        // (The token's text keeps the `@`s.)
        self.current.assign(VARIABLE, self.slice(start, pos + name));
        pos + name
    }

    fn money(&mut self) -> usize {
        let (pos, len) = (self.pos, self.s.len());
        if pos + 1 == len {
            self.current.assign_char(BAREWORD, b'$');
            return len;
        }
        let amount = self
            .slice(pos + 1, len)
            .iter()
            .take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b','))
            .count();
        if amount > 0 {
            if amount == 1 && self.at(pos + 1) == b'.' {
                return self.word();
            }
            self.current
                .assign(NUMBER, self.slice(pos, pos + 1 + amount));
            return pos + 1 + amount;
        }
        if self.at(pos + 1) == b'$' {
            // `$$...$$`
            let start = pos + 2;
            let end = find2(self.slice(start, len), b'$', b'$');
            return self.delimited(b'$', start, end, 2);
        }
        let tag = self
            .slice(pos + 1, len)
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let tag_end = pos + 1 + tag;
        if tag == 0 || tag_end >= len || self.at(tag_end) != b'$' {
            self.current.assign_char(BAREWORD, b'$');
            return pos + 1;
        }
        // `$tag$...$tag$`
        let tag = self.slice(pos, tag_end + 1);
        let start = tag_end + 1;
        let end = memchr::memmem::find(self.slice(start, len), tag);
        self.delimited(b'$', start, end, tag.len())
    }

    fn number(&mut self) -> usize {
        let (start, len) = (self.pos, self.s.len());
        let digits_from = |t: &Self, from: usize, digit: fn(&u8) -> bool| {
            from + t.slice(from, len).iter().take_while(|b| digit(b)).count()
        };
        if self.at(start) == b'0' && start + 1 < len {
            let radix: Option<fn(&u8) -> bool> = match self.at(start + 1) {
                b'X' | b'x' => Some(u8::is_ascii_hexdigit),
                b'B' | b'b' => Some(|b| *b == b'0' || *b == b'1'),
                _ => None,
            };
            if let Some(digit) = radix {
                let end = digits_from(self, start + 2, digit);
                let kind = if end == start + 2 { BAREWORD } else { NUMBER };
                self.current.assign(kind, self.slice(start, end));
                return end;
            }
        }
        let mut pos = digits_from(self, start, u8::is_ascii_digit);
        if pos < len && self.at(pos) == b'.' {
            pos = digits_from(self, pos + 1, u8::is_ascii_digit);
            if pos - start == 1 {
                self.current.assign_char(DOT, b'.');
                return pos;
            }
        }
        let (mut have_e, mut have_exp) = (false, false);
        if pos < len && matches!(self.at(pos), b'E' | b'e') {
            have_e = true;
            pos += 1;
            if pos < len && matches!(self.at(pos), b'+' | b'-') {
                pos += 1;
            }
            let end = digits_from(self, pos, u8::is_ascii_digit);
            have_exp = end > pos;
            pos = end;
        }
        if pos < len && matches!(self.at(pos), b'd' | b'D' | b'f' | b'F') {
            let next = self.at(pos + 1);
            if pos + 1 == len || is_white(next) || next == b';' || matches!(next, b'u' | b'U') {
                pos += 1;
            }
        }
        let kind = if have_e && !have_exp {
            BAREWORD
        } else {
            NUMBER
        };
        self.current.assign(kind, self.slice(start, pos));
        pos
    }
}

/// One context's reading of the value: its folded tokens and what the tokenizer counted.
struct Context<'a> {
    s: &'a [u8],
    /// The folding area (up to two more tokens than a fingerprint, to look ahead).
    tv: [Token; MAX_TOKENS + 3],
    /// The fingerprint's tokens.
    tokens: [Token; MAX_TOKENS + 3],
    count: usize,
    fingerprint: [u8; 8],
    stats_tokens: u32,
    comment_ddx: u32,
    comment_hash: u32,
}

impl<'a> Context<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self {
            s,
            tv: [EMPTY; MAX_TOKENS + 3],
            tokens: [EMPTY; MAX_TOKENS + 3],
            count: 0,
            fingerprint: [0; 8],
            stats_tokens: 0,
            comment_ddx: 0,
            comment_hash: 0,
        }
    }

    fn reparse_as_mysql(&self) -> bool {
        self.comment_ddx != 0 || self.comment_hash != 0
    }

    /// Whether the value after `quote` is an injection with ANSI comments or, when it has
    /// a comment MySQL reads otherwise, with MySQL's.
    fn ansi_then_mysql(&mut self, quote: u8) -> bool {
        self.injection(Mode {
            quote,
            mysql: false,
        }) || (self.reparse_as_mysql() && self.injection(Mode { quote, mysql: true }))
    }

    /// Whether the value read in `mode` is an injection: its fingerprint is listed, and no
    /// false-positive rule clears it.
    fn injection(&mut self, mode: Mode) -> bool {
        self.fingerprint(mode);
        self.blacklisted() && self.not_whitelisted()
    }

    fn kind(&self, i: usize) -> u8 {
        self.tv.get(i).map_or(NONE, |t| t.kind)
    }

    fn tok(&self, i: usize) -> &Token {
        self.tv.get(i).unwrap_or(&EMPTY)
    }

    fn set_kind(&mut self, i: usize, kind: u8) {
        if let Some(t) = self.tv.get_mut(i) {
            t.kind = kind;
        }
    }

    fn put(&mut self, i: usize, token: Token) {
        if let Some(t) = self.tv.get_mut(i) {
            *t = token;
        }
    }

    fn copy(&mut self, to: usize, from: usize) {
        let token = *self.tok(from);
        self.put(to, token);
    }

    fn push(&mut self, token: Token) {
        if let Some(t) = self.tokens.get_mut(self.count) {
            *t = token;
            self.count += 1;
        }
    }

    /// Merges two word-like tokens that form a phrase of the table (`UNION ALL`).
    fn merge_words(&mut self, left: usize) -> bool {
        const FIRST: &[u8] = &[
            KEYWORD, BAREWORD, OPERATOR, UNION, FUNCTION, EXPRESSION, TSQL, SQLTYPE,
        ];
        const SECOND: &[u8] = &[
            KEYWORD,
            BAREWORD,
            OPERATOR,
            UNION,
            FUNCTION,
            EXPRESSION,
            TSQL,
            SQLTYPE,
            LOGIC_OPERATOR,
        ];
        let (a, b) = (*self.tok(left), *self.tok(left + 1));
        if !FIRST.contains(&a.kind) || !SECOND.contains(&b.kind) {
            return false;
        }
        let merged_len = a.len + b.len + 1;
        if merged_len >= TOKEN_SIZE {
            return false;
        }
        let mut merged = [0_u8; TOKEN_SIZE];
        for (i, &c) in a.text().iter().chain(b" ").chain(b.text()).enumerate() {
            if let Some(slot) = merged.get_mut(i) {
                *slot = c;
            }
        }
        let phrase = merged.get(..merged_len).unwrap_or_default();
        let kind = lookup(phrase);
        if kind == BAREWORD {
            return false;
        }
        if let Some(t) = self.tv.get_mut(left) {
            let len = merged_len.min(TOKEN_SIZE - 1);
            if let (Some(dst), Some(src)) = (t.val.get_mut(..len), merged.get(..len)) {
                dst.copy_from_slice(src);
            }
            t.len = len;
            t.kind = kind;
        }
        true
    }

    /// Reads tokens into `tv[pos]` until `pos - left` reaches `want` (comments are kept
    /// aside, as `last_comment`).
    fn fill(
        &mut self,
        tz: &mut Tokenizer<'_>,
        more: &mut bool,
        pos: &mut usize,
        left: usize,
        want: usize,
        last_comment: &mut Token,
    ) {
        while *more && *pos <= MAX_TOKENS && pos.wrapping_sub(left) < want {
            match tz.next() {
                Some(token) => {
                    self.stats_tokens += 1;
                    if token.kind == COMMENT {
                        *last_comment = token;
                    } else {
                        last_comment.kind = NONE;
                        self.put(*pos, token);
                        *pos += 1;
                    }
                }
                None => *more = false,
            }
        }
    }

    /// Tokenizes and folds the value in `mode` into `tokens` (libinjection's folding rules),
    /// and sets the fingerprint.
    fn fingerprint(&mut self, mode: Mode) {
        self.tv = [EMPTY; MAX_TOKENS + 3];
        self.count = 0;
        self.fingerprint = [0; 8];
        self.stats_tokens = 0;
        self.comment_ddx = 0;
        self.comment_hash = 0;
        let mut tz = Tokenizer::new(self.s, mode);
        let width = self.fold(&mut tz);
        let n = width.min(self.count).min(8);
        for (slot, token) in self.fingerprint.iter_mut().zip(self.tokens.iter()).take(n) {
            *slot = token.kind;
        }
        if self.fingerprint.contains(&EVIL) {
            self.fingerprint = [0; 8];
            self.fingerprint[0] = EVIL;
            if self.count > 0 {
                let mut evil = EMPTY;
                evil.assign_char(EVIL, EVIL);
                self.tokens[0] = evil;
                self.count = 1;
            }
        }
    }

    /// The folding loop; returns the fingerprint's width.
    fn fold(&mut self, tz: &mut Tokenizer<'_>) -> usize {
        let mut last_comment = EMPTY;
        let mut more = true;
        // Leading comments, left parentheses, SQL types and unary operators are skipped.
        loop {
            match tz.next() {
                Some(token) => {
                    self.stats_tokens += 1;
                    self.put(0, token);
                    if !(matches!(token.kind, COMMENT | LEFT_PARENS | SQLTYPE)
                        || token.is_unary_op())
                    {
                        break;
                    }
                }
                None => {
                    more = false;
                    break;
                }
            }
        }
        if !more {
            self.comment_ddx = tz.comment_ddx;
            self.comment_hash = tz.comment_hash;
            return 0;
        }
        let mut pos = 1_usize;
        let mut left = 0_usize;
        loop {
            if pos >= MAX_TOKENS {
                // Five tokens of these shapes (each place: the types it may have) fold
                // back to their first (`1,(1)`, `foo-(bar)`, `1),(1`, `foo)-(bar`).
                const SHAPES: [[&[u8]; MAX_TOKENS]; 4] = [
                    [b"1", b"o,", b"(", b"1", b")"],
                    [b"n", b"o", b"(", b"n1", b")"],
                    [b"1", b")", b",", b"(", b"1"],
                    [b"n", b")", b"o", b"(", b"n"],
                ];
                let special = SHAPES.iter().any(|shape| {
                    shape
                        .iter()
                        .enumerate()
                        .all(|(i, kinds)| kinds.contains(&self.kind(i)))
                });
                if special {
                    if pos > MAX_TOKENS {
                        self.copy(1, MAX_TOKENS);
                        pos = 2;
                    } else {
                        pos = 1;
                    }
                    left = 0;
                }
            }
            if !more || left >= MAX_TOKENS {
                left = pos;
                break;
            }
            self.fill(tz, &mut more, &mut pos, left, 2, &mut last_comment);
            if pos.wrapping_sub(left) < 2 {
                left = pos;
                continue;
            }
            let (a, b) = (self.kind(left), self.kind(left + 1));
            let b_tok = *self.tok(left + 1);
            if (a == STRING && b == STRING) || (a == SEMICOLON && b == SEMICOLON) {
                pos -= 1;
                continue;
            } else if matches!(a, OPERATOR | LOGIC_OPERATOR)
                && (b_tok.is_unary_op() || b == SQLTYPE)
            {
                pos -= 1;
                left = 0;
                continue;
            } else if (a == LEFT_PARENS && b_tok.is_unary_op()) || self.merge_words(left) {
                pos -= 1;
                left = left.saturating_sub(1);
                continue;
            } else if a == SEMICOLON
                && b == FUNCTION
                && b_tok.len >= 2
                && b_tok
                    .val
                    .get(..2)
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"IF"))
            {
                self.set_kind(left + 1, TSQL);
                continue;
            } else if matches!(a, BAREWORD | VARIABLE) && b == LEFT_PARENS && {
                let t = self.tok(left);
                [
                    &b"USER_ID"[..],
                    b"USER_NAME",
                    b"DATABASE",
                    b"PASSWORD",
                    b"USER",
                    b"CURRENT_USER",
                    b"CURRENT_DATE",
                    b"CURRENT_TIME",
                    b"CURRENT_TIMESTAMP",
                    b"LOCALTIME",
                    b"LOCALTIMESTAMP",
                ]
                .iter()
                .any(|w| t.is(w))
            } {
                self.set_kind(left, FUNCTION);
                continue;
            } else if a == KEYWORD && {
                let t = self.tok(left);
                t.is(b"IN") || t.is(b"NOT IN")
            } {
                self.set_kind(left, if b == LEFT_PARENS { OPERATOR } else { BAREWORD });
                continue;
            } else if a == OPERATOR && {
                let t = self.tok(left);
                t.is(b"LIKE") || t.is(b"NOT LIKE")
            } {
                if b == LEFT_PARENS {
                    self.set_kind(left, FUNCTION);
                }
            } else if a == SQLTYPE
                && matches!(
                    b,
                    BAREWORD | NUMBER | SQLTYPE | LEFT_PARENS | FUNCTION | VARIABLE | STRING
                )
            {
                self.copy(left, left + 1);
                pos -= 1;
                left = 0;
                continue;
            } else if a == COLLATE && b == BAREWORD {
                // (Read as text, which a value that is not UTF-8 is not.)
                if std::str::from_utf8(b_tok.text()).is_ok() && b_tok.text().contains(&b'_') {
                    self.set_kind(left + 1, SQLTYPE);
                    left = 0;
                }
            } else if a == BACKSLASH {
                if b_tok.is_arithmetic_op() {
                    self.set_kind(left, NUMBER);
                } else {
                    self.copy(left, left + 1);
                    pos -= 1;
                }
                left = 0;
                continue;
            } else if (a == LEFT_PARENS && b == LEFT_PARENS)
                || (a == RIGHT_PARENS && b == RIGHT_PARENS)
            {
                pos -= 1;
                left = 0;
                continue;
            } else if a == LEFT_BRACE && b == BAREWORD {
                if b_tok.len == 0 {
                    // `{ ``...`: MySQL's odd `{``.``.id}`, too rare to parse; evil.
                    self.set_kind(left + 1, EVIL);
                    self.count = 0;
                    for i in 0..left + 2 {
                        let token = *self.tok(i);
                        self.push(token);
                    }
                    return left + 2;
                }
                left = 0;
                pos -= 2;
                continue;
            } else if b == RIGHT_BRACE {
                pos -= 1;
                left = 0;
                continue;
            }

            // No two-token fold: one more token for the three-token ones.
            self.fill(tz, &mut more, &mut pos, left, 3, &mut last_comment);
            if pos.wrapping_sub(left) < 3 {
                left = pos;
                continue;
            }
            let (a, b, c) = (self.kind(left), self.kind(left + 1), self.kind(left + 2));
            let b_tok = *self.tok(left + 1);
            if (a == NUMBER && b == OPERATOR && c == NUMBER)
                || (a == OPERATOR && b != LEFT_PARENS && c == OPERATOR)
                || (a == LOGIC_OPERATOR && c == LOGIC_OPERATOR)
                || (a == VARIABLE && b == OPERATOR && matches!(c, VARIABLE | NUMBER | BAREWORD))
                || (matches!(a, BAREWORD | NUMBER)
                    && b == OPERATOR
                    && matches!(c, NUMBER | BAREWORD))
                || (matches!(a, BAREWORD | NUMBER | VARIABLE | STRING)
                    && b == OPERATOR
                    && b_tok.text() == b"::"
                    && c == SQLTYPE)
                || (matches!(a, BAREWORD | NUMBER | STRING | VARIABLE)
                    && b == COMMA
                    && matches!(c, NUMBER | BAREWORD | STRING | VARIABLE))
            {
                pos -= 2;
                left = 0;
                continue;
            } else if (matches!(a, EXPRESSION | GROUP | COMMA)
                && b_tok.is_unary_op()
                && c == LEFT_PARENS)
                || (matches!(a, KEYWORD | EXPRESSION | GROUP)
                    && b_tok.is_unary_op()
                    && matches!(c, NUMBER | BAREWORD | VARIABLE | STRING | FUNCTION))
            {
                // A unary operator before `(` or a value: dropped (`SELECT - 1`).
                self.copy(left + 1, left + 2);
                pos -= 1;
                left = 0;
                continue;
            } else if a == COMMA
                && b_tok.is_unary_op()
                && matches!(c, NUMBER | BAREWORD | VARIABLE | STRING)
            {
                self.copy(left + 1, left + 2);
                left = 0;
                if pos >= 3 {
                    pos -= 3;
                }
                continue;
            } else if a == COMMA && b_tok.is_unary_op() && c == FUNCTION {
                self.copy(left + 1, left + 2);
                pos -= 1;
                left = 0;
                continue;
            } else if a == BAREWORD && b == DOT && c == BAREWORD {
                pos -= 2;
                left = 0;
                continue;
            } else if a == EXPRESSION && b == DOT && c == BAREWORD {
                self.copy(left + 1, left + 2);
                pos -= 1;
                left = 0;
                continue;
            } else if a == FUNCTION && b == LEFT_PARENS && c != RIGHT_PARENS {
                // `USER(foo)` is not the zero-argument function.
                if self.tok(left).is(b"USER") {
                    self.set_kind(left, BAREWORD);
                }
            }
            left += 1;
        }
        let mut left = left.min(MAX_TOKENS);
        if left > 2
            && let Some(last) = self.tv.get_mut(left - 1)
            && last.kind == BAREWORD
            && last.str_open == TICK
            && last.len == 0
            && last.str_close == NONE
        {
            // PHP's unclosed backtick comment.
            last.kind = COMMENT;
        }
        self.count = 0;
        for i in 0..left.min(MAX_TOKENS) {
            let token = *self.tok(i);
            if token.kind != NONE {
                self.push(token);
            }
        }
        self.comment_ddx = tz.comment_ddx;
        self.comment_hash = tz.comment_hash;
        if left < MAX_TOKENS && last_comment.kind == COMMENT {
            self.push(last_comment);
            left += 1;
        }
        left
    }

    fn fingerprint_text(&self) -> &[u8] {
        let n = self.fingerprint.iter().position(|&b| b == 0).unwrap_or(8);
        self.fingerprint.get(..n).unwrap_or_default()
    }

    fn blacklisted(&self) -> bool {
        let fp = self.fingerprint_text();
        if fp.is_empty() {
            return false;
        }
        let mut key = [0_u8; 9];
        key[0] = b'0';
        for (slot, c) in key.iter_mut().skip(1).zip(fp) {
            *slot = c.to_ascii_uppercase();
        }
        lookup(key.get(..=fp.len()).unwrap_or_default()) == FINGERPRINT
    }

    /// libinjection's false-positive rules for a listed fingerprint: `true` keeps the
    /// verdict of injection.
    fn not_whitelisted(&self) -> bool {
        let fp = self.fingerprint_text();
        if fp.len() > 1 && fp.last() == Some(&COMMENT) && self.mentions_sp_password() {
            return true;
        }
        let t = |i: usize| {
            self.tokens
                .get(i)
                .filter(|_| i < self.count)
                .unwrap_or(&EMPTY)
        };
        match fp.len() {
            2 => {
                if self.count < 2 {
                    return true;
                }
                if fp.get(1) == Some(&UNION) {
                    return self.stats_tokens != 2;
                }
                if t(1).first() == b'#' {
                    return false;
                }
                if t(0).kind == BAREWORD && t(1).kind == COMMENT && t(1).first() != b'/' {
                    return false;
                }
                if t(0).kind == NUMBER && t(1).kind == COMMENT {
                    if t(1).first() == b'/' || self.stats_tokens > 2 {
                        return true;
                    }
                    // (The number's length read as a position, as libinjection does.)
                    let at = t(0).len;
                    let Some(&ch) = self.s.get(at) else {
                        return false;
                    };
                    let next = self.s.get(at + 1).copied();
                    return ch <= 32
                        || ch >= 0x80
                        || (ch == b'/' && next == Some(b'*'))
                        || (ch == b'-' && next == Some(b'-'));
                }
                !(t(1).len > 2 && t(1).first() == b'-')
            }
            3 => {
                if self.count < 3 {
                    return true;
                }
                if fp == b"sos" || fp == b"s&s" {
                    return t(0).str_open == NONE
                        && t(2).str_close == NONE
                        && t(0).str_close == t(2).str_open;
                }
                if matches!(fp, b"s&n" | b"n&1" | b"1&1" | b"1&v" | b"1&s")
                    && self.stats_tokens == 3
                {
                    return false;
                }
                if t(1).kind == KEYWORD && (t(1).len < 5 || !t(1).val.starts_with(b"INTO")) {
                    return false;
                }
                true
            }
            _ => true,
        }
    }

    /// Whether the value (read as UTF-8) mentions `sp_password` in any case.
    fn mentions_sp_password(&self) -> bool {
        std::str::from_utf8(self.s).is_ok()
            && self
                .s
                .windows(11)
                .any(|w| w.eq_ignore_ascii_case(b"sp_password"))
    }
}

/// The fingerprint of `input` in one context (`quote` 0, `'` or `"`; MySQL or ANSI
/// comments), for the tests.
#[cfg(test)]
pub(crate) fn fingerprint_of(input: &[u8], quote: u8, mysql: bool) -> Vec<u8> {
    let mut ctx = Context::new(input);
    ctx.fingerprint(Mode { quote, mysql });
    ctx.fingerprint_text().to_vec()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use libinjectionrs::{SqliFlags, SqliState};

    /// The contexts libinjection reads a value in (and one it does not), as
    /// `libinjectionrs` flags and as `(quote, mysql)`.
    fn contexts() -> [(SqliFlags, u8, bool); 6] {
        use SqliFlags as F;
        [
            (F::FLAG_QUOTE_NONE | F::FLAG_SQL_ANSI, 0, false),
            (F::FLAG_QUOTE_NONE | F::FLAG_SQL_MYSQL, 0, true),
            (F::FLAG_QUOTE_SINGLE | F::FLAG_SQL_ANSI, b'\'', false),
            (F::FLAG_QUOTE_SINGLE | F::FLAG_SQL_MYSQL, b'\'', true),
            (F::FLAG_QUOTE_DOUBLE | F::FLAG_SQL_MYSQL, b'"', true),
            (F::FLAG_QUOTE_DOUBLE | F::FLAG_SQL_ANSI, b'"', false),
        ]
    }

    /// Compares the verdict, and the fingerprint in every context, with `libinjectionrs`.
    fn agrees(input: &[u8]) -> Result<(), String> {
        let theirs = SqliState::new(input, SqliFlags::FLAG_NONE).detect();
        let ours = is_sqli(input);
        if theirs != ours {
            return Err(format!(
                "verdict {ours} (libinjectionrs {theirs}) on {:?}",
                String::from_utf8_lossy(input)
            ));
        }
        for (n, (flags, quote, mysql)) in contexts().into_iter().enumerate() {
            let theirs = SqliState::new(input, flags).get_fingerprint();
            let ours = fingerprint_of(input, quote, mysql);
            if theirs.as_str().as_bytes() != ours.as_slice() {
                return Err(format!(
                    "fingerprint {:?} (libinjectionrs {:?}) in context {n} on {:?}",
                    String::from_utf8_lossy(&ours),
                    theirs.as_str(),
                    String::from_utf8_lossy(input)
                ));
            }
        }
        Ok(())
    }

    fn check_all<'a>(inputs: impl IntoIterator<Item = &'a [u8]>) -> (usize, usize) {
        let (mut n, mut flagged) = (0, 0);
        let mut failures = Vec::new();
        for input in inputs {
            n += 1;
            flagged += usize::from(is_sqli(input));
            if let Err(e) = agrees(input)
                && failures.len() < 20
            {
                failures.push(e);
            }
        }
        assert!(
            failures.is_empty(),
            "{} disagreements:\n{}",
            failures.len(),
            failures.join("\n")
        );
        (n, flagged)
    }

    fn percent_decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                s[i],
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (b'+', ..) => {
                    out.push(b' ');
                    i += 1;
                }
                (c, ..) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out
    }

    fn shared() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
    }

    #[test]
    fn agrees_with_libinjection_on_the_attack_and_benign_corpora() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for dir in ["corpora/web", "corpora/ai"] {
            for entry in std::fs::read_dir(shared().join(dir)).unwrap() {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    if let Some(t) = v["text"].as_str() {
                        inputs.push(t.as_bytes().to_vec());
                    }
                }
            }
        }
        let (n, flagged) = check_all(inputs.iter().map(Vec::as_slice));
        assert!(n > 40_000, "{n} inputs");
        // The corpora hold SQL injections: the detector must be exercised on both verdicts.
        assert!(
            flagged > 1_000 && flagged < n / 2,
            "{flagged} of {n} flagged"
        );
    }

    #[test]
    fn agrees_with_libinjection_on_the_crs_test_payloads() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        let mut stack = vec![shared().join("crs/tests")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    for line in std::fs::read(&path).unwrap().split(|&b| b == b'\n') {
                        let line = line.trim_ascii();
                        inputs.push(line.to_vec());
                        inputs.push(percent_decode(line));
                        // The value after the YAML key, and its query arguments.
                        if let Some(at) = line.iter().position(|&b| b == b':') {
                            let value = line[at + 1..].trim_ascii();
                            let value = value.strip_prefix(b"\"").unwrap_or(value);
                            let value = value.strip_suffix(b"\"").unwrap_or(value);
                            inputs.push(value.to_vec());
                            for arg in value.split(|&b| b == b'&' || b == b'?') {
                                let arg = arg.splitn(2, |&b| b == b'=').last().unwrap_or(arg);
                                inputs.push(percent_decode(arg));
                            }
                        }
                    }
                }
            }
        }
        let (n, flagged) = check_all(inputs.iter().map(Vec::as_slice));
        assert!(n > 200_000, "{n} inputs");
        assert!(flagged > 1_000, "{flagged} of {n} flagged");
    }

    /// Values made of SQL's pieces in random order: keywords, operators, quotes of every
    /// kind, comments, numbers of every form, and odd bytes.
    #[test]
    fn agrees_with_libinjection_on_generated_sql_like_text() {
        let mut pieces: Vec<Vec<u8>> = [
            "'",
            "\"",
            "`",
            "--",
            "-- ",
            "--x",
            "#",
            "/*",
            "*/",
            "/*!",
            "/*!50000",
            "/*/**/",
            "(",
            ")",
            "{",
            "}",
            "[",
            "]",
            ",",
            ";",
            ";;",
            ":",
            "::",
            ":=",
            ".",
            "..",
            "\\",
            "\\N",
            "@",
            "@@",
            "@`x`",
            "@'v'",
            "$",
            "$$",
            "$1,000.5",
            "$.",
            "$a$",
            "$tag$x$tag$",
            "0x",
            "0x1f",
            "0b",
            "0b101",
            "1",
            "12",
            "1.",
            ".5",
            "1.e",
            "1e",
            "1e5",
            "1e+",
            "1.2f",
            "1d",
            "1fUNION",
            "3.14",
            "N'",
            "n'x'",
            "E'",
            "e'\\''",
            "U&'",
            "u&'x'",
            "q'[x]'",
            "Q'(",
            "nq'<a>'",
            "b'01'",
            "B'2'",
            "x'ff'",
            "X'g'",
            "=",
            "<",
            ">",
            "<=>",
            "<=",
            "!=",
            "!",
            "!!",
            "~",
            "+",
            "-",
            "*",
            "/",
            "%",
            "^",
            "|",
            "||",
            "&",
            "&&",
            "?",
            " ",
            "  ",
            "\t",
            "\n",
            "\r",
            "\x0b",
            "\x0c",
            "\u{a0}",
            "\0",
            "\u{e9}",
            "sp_password",
            "SELECT.1",
            "x`y",
            "a_b",
            "USER",
            "user(",
            "IN",
            "NOT IN",
            "LIKE",
            "COLLATE",
            "utf8_bin",
            "IF",
            "NOT",
            "INTO",
            "INTO OUTFILE",
            "union all",
            "order by",
            "a",
            "foo",
            "id",
            "x",
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        pieces.push(vec![0x80]);
        pieces.push(vec![0xff, 0xfe]);
        let words: Vec<&str> = SQL_KEYWORDS
            .iter()
            .filter(|k| k.token_type != b'F')
            .map(|k| k.word)
            .collect();
        let mut next = crate::testing::xorshift(0x5eed_0f5a_11ec_7001);
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for _ in 0..250_000 {
            let mut value = Vec::new();
            let n = 1 + next() % 9;
            for _ in 0..n {
                let r = next();
                if r.is_multiple_of(4) {
                    let w = words[(r / 4) as usize % words.len()];
                    if r.is_multiple_of(8) {
                        value.extend(w.to_ascii_lowercase().bytes());
                    } else {
                        value.extend(w.bytes());
                    }
                } else {
                    value.extend(&pieces[(r / 4) as usize % pieces.len()]);
                }
                if next().is_multiple_of(3) {
                    value.push(b' ');
                }
            }
            inputs.push(value);
        }
        let (n, flagged) = check_all(inputs.iter().map(Vec::as_slice));
        assert!(flagged > n / 20, "{flagged} of {n} flagged");
    }

    #[test]
    fn the_keyword_lookup_matches_the_table() {
        for k in SQL_KEYWORDS {
            for form in [k.word.to_string(), k.word.to_ascii_lowercase()] {
                let expected = libinjectionrs::sqli::sqli_data::lookup_word(&form);
                let theirs = expected != libinjectionrs::sqli::TokenType::Bareword;
                assert_eq!(is_keyword(form.as_bytes()), theirs, "{form}");
            }
        }
        assert!(!is_keyword(b""));
        assert!(!is_keyword(&[b'A'; 200]));
    }
}
