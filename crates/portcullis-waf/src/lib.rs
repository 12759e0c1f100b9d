//! The Portcullis web application firewall. **In progress**: this crate currently provides the
//! transformation functions ([`Transform`]), the operators ([`Operator`], [`Condition`]) and the
//! body parsers ([`parse_urlencoded`], [`parse_multipart`], [`parse_json`]),
//! with ModSecurity semantics, that the rule engine, the OWASP CRS loader and the AI rule pack
//! will be built on. The engine, the layer, the
//! `ai-guard` pack and the response leak guard are not here yet.
//!
//! ```
//! use portcullis_waf::{Transform, apply_all};
//!
//! let pipeline = [Transform::UrlDecodeUni, Transform::HtmlEntityDecode, Transform::Lowercase];
//! assert_eq!(apply_all(&pipeline, b"%26lt;SCRIPT%3E").as_ref(), b"<script>");
//! ```

mod body;
mod operator;
mod transform;

pub use body::{
    Arg, BodyError, Limits, Parsed, Part, multipart_boundary, parse_json, parse_multipart,
    parse_urlencoded,
};
pub use operator::{Comparison, Condition, Operator, OperatorError};
pub use transform::{Transform, UnknownTransform, apply_all};
