//! The catalog, declared once: each event type's wire name, its Rust type and the `data` fields
//! it requires and allows, each with the [`Kind`] of value it must hold. From that one
//! declaration come the type's struct (read with serde from a parsed `data` or straight from its
//! JSON text), its [`EventType`] and [`Event`] variants, and the table that words a refusal
//! (`validate`). A field's rule lives in its kind ([`rule`]): the struct's reading and the
//! refusal's wording both apply it, so they cannot disagree.
//!
//! Schema versions: [`Event::parse`] takes the event's `schema_version`. Every type has one
//! version today, and any version is read by its rules (as ingest always did). A type that
//! changes its data gets a new version read into the same struct: a match arm in
//! [`Event::parse`] (and in [`TokenUsage::from_json_text`] for the token usage) that reads the
//! older or newer shape and upcasts it, so that every reader keeps one type.

use crate::money::{decimal_from_f64, parse_decimal};
use crate::{MAX_COST_USD, MAX_TOKENS};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// The JSON type a `data` field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A non-empty string.
    Str,
    /// An integer from 0 to `i64::MAX`: counts the projectors read back as a bigint.
    Count,
    /// A token count: an integer from 0 to [`MAX_TOKENS`].
    Tokens,
    /// An integer ≥ 1.
    PositiveInt,
    /// A number ≥ 0.
    NonNegNumber,
    /// A decimal amount ≥ 0: a JSON number or a string such as `"0.30"`.
    Money,
    /// An RFC 3339 timestamp string.
    Timestamp,
    /// A string or an integer.
    StrOrInt,
    /// A string or an integer naming an issue, where `null` says "none": unlike other optional
    /// fields, a null is kept apart from an absent field (`Some(None)`).
    IssueRef,
    /// An array of anything.
    Array,
    /// Any JSON value.
    Any,
}

impl Kind {
    /// What a refusal says the field must be.
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a non-empty string",
            Kind::Count => "an integer from 0 to 9223372036854775807",
            Kind::Tokens => "an integer from 0 to 1000000000000",
            Kind::PositiveInt => "an integer >= 1",
            Kind::NonNegNumber => "a number >= 0",
            Kind::Money => "a decimal amount from 0 to 1000000 (a number or a string like \"0.30\")",
            Kind::Timestamp => "an RFC 3339 timestamp string",
            Kind::StrOrInt | Kind::IssueRef => "a string or an integer",
            Kind::Array => "an array",
            Kind::Any => "any value",
        }
    }

    /// What a stored event's field must be to be read (see [`Event::read`]).
    fn readable_as(self) -> &'static str {
        match self {
            Kind::Count | Kind::Tokens => "an integer >= 0",
            other => other.expected(),
        }
    }

    /// Whether ingest accepts `v` for a field of this kind: [`Kind::readable`], and token counts
    /// at most [`MAX_TOKENS`] (the bound held at the door only: an event stored before it held
    /// is still read, and a sum it overflows is refused where it is written).
    pub fn accepts(self, v: &Value) -> bool {
        self.readable(v) && (self != Kind::Tokens || v.as_i64().is_some_and(|n| n <= MAX_TOKENS))
    }

    /// Whether `v` reads as this kind: the kind's rule, as the structs apply it.
    pub fn readable(self, v: &Value) -> bool {
        use rule::Read;
        fn ok<'de, S: DeserializeSeed<'de>>(seed: S, v: &'de Value) -> bool {
            seed.deserialize(v).is_ok()
        }
        match self {
            Kind::Str => ok(Read::<rule::Str, Cow<'_, str>>::new(), v),
            Kind::Count => ok(Read::<rule::Count, i64>::new(), v),
            Kind::Tokens => ok(Read::<rule::Tokens, i64>::new(), v),
            Kind::PositiveInt => ok(Read::<rule::PositiveInt, i64>::new(), v),
            Kind::NonNegNumber => ok(Read::<rule::NonNegNumber, f64>::new(), v),
            Kind::Money => ok(Read::<rule::Money, Decimal>::new(), v),
            Kind::Timestamp => ok(Read::<rule::Timestamp, DateTime<Utc>>::new(), v),
            Kind::StrOrInt | Kind::IssueRef => ok(Read::<rule::StrOrInt, StrOrInt>::new(), v),
            Kind::Array => v.is_array(),
            Kind::Any => true,
        }
    }
}

/// A value that is a string or an integer (a CI run id, a heartbeat's `current_issue`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum StrOrInt {
    Str(String),
    /// Any JSON integer: from `i64::MIN` to `u64::MAX`.
    Int(i128),
}

impl fmt::Display for StrOrInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrOrInt::Str(s) => f.write_str(s),
            StrOrInt::Int(n) => write!(f, "{n}"),
        }
    }
}

/// The rule of each kind, as a serde seed producing the field's Rust type. [`Kind::accepts`]
/// and every struct of the catalog read through these, and nothing else.
pub mod rule {
    use super::*;

    pub struct Str;
    pub struct Count;
    pub struct Tokens;
    pub struct PositiveInt;
    pub struct NonNegNumber;
    pub struct Money;
    pub struct Timestamp;
    pub struct StrOrInt;
    pub struct IssueRef;
    pub struct Array;
    pub struct Any;

    /// Reads a value of kind `K` as a `T`.
    pub struct Read<K, T>(PhantomData<(K, T)>);

    impl<K, T> Read<K, T> {
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Read(PhantomData)
        }
    }

    /// Reads an optional field: null is absent.
    pub struct Opt<S>(pub S);

    /// What a null optional field is: absent, but for [`Kind::IssueRef`].
    pub trait OnNull: Sized {
        fn on_null() -> Option<Self> {
            None
        }
    }

    impl OnNull for String {}
    impl OnNull for Cow<'_, str> {}
    impl OnNull for i64 {}
    impl OnNull for f64 {}
    impl OnNull for Decimal {}
    impl OnNull for DateTime<Utc> {}
    impl OnNull for super::StrOrInt {}
    impl OnNull for Vec<Value> {}
    impl OnNull for Value {}
    impl OnNull for Option<super::StrOrInt> {
        fn on_null() -> Option<Self> {
            Some(None)
        }
    }

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Opt<S>
    where
        S::Value: OnNull,
    {
        type Value = Option<S::Value>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            struct V<S>(S);
            impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for V<S>
            where
                S::Value: OnNull,
            {
                type Value = Option<S::Value>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a value or null")
                }
                fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(S::Value::on_null())
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(S::Value::on_null())
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                    self.0.deserialize(d).map(Some)
                }
            }
            d.deserialize_option(V(self.0))
        }
    }

    fn refused<E: de::Error>(kind: super::Kind) -> E {
        E::custom(format_args!("must be {}", kind.expected()))
    }

    /// A string, borrowed from the input when it can be.
    struct StrVisitor;

    impl<'de> Visitor<'de> for StrVisitor {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(super::Kind::Str.expected())
        }
        fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(s))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(s.to_owned()))
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(s))
        }
    }

    fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'de, str>, D::Error> {
        let s = d.deserialize_str(StrVisitor)?;
        if s.is_empty() {
            return Err(refused(super::Kind::Str));
        }
        Ok(s)
    }

    impl<'de: 'a, 'a> DeserializeSeed<'de> for Read<Str, Cow<'a, str>> {
        type Value = Cow<'a, str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            non_empty(d)
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<Str, String> {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            non_empty(d).map(Cow::into_owned)
        }
    }

    /// An integer (never a float, whatever its value) within `range`.
    fn int_in<'de, D: Deserializer<'de>>(
        d: D,
        kind: super::Kind,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = i128;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<i128, E> {
                Ok(n.into())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<i128, E> {
                Ok(n.into())
            }
        }
        let n = d.deserialize_i64(V)?;
        i64::try_from(n)
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| refused(kind))
    }

    impl<'de> DeserializeSeed<'de> for Read<Count, i64> {
        type Value = i64;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
            int_in(d, super::Kind::Count, 0..=i64::MAX)
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<Tokens, i64> {
        type Value = i64;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
            // Read up to `i64::MAX`: the door's bound is `Kind::accepts`'.
            int_in(d, super::Kind::Tokens, 0..=i64::MAX)
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<PositiveInt, i64> {
        type Value = i64;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
            int_in(d, super::Kind::PositiveInt, 1..=i64::MAX)
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<NonNegNumber, f64> {
        type Value = f64;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
            let n = f64::deserialize(d)?;
            if n.is_finite() && n >= 0.0 {
                Ok(n)
            } else {
                Err(refused(super::Kind::NonNegNumber))
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<Money, Decimal> {
        type Value = Decimal;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Decimal, D::Error> {
            // The reading of `money::decimal_from_json`: a JSON number through its shortest
            // decimal form, or a decimal string.
            struct V;
            impl Visitor<'_> for V {
                type Value = Option<Decimal>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(super::Kind::Money.expected())
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                    Ok(parse_decimal(s))
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                    Ok(Some(Decimal::from(n)))
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                    Ok(Some(Decimal::from(n)))
                }
                fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                    Ok(decimal_from_f64(n))
                }
            }
            d.deserialize_any(V)?
                .filter(|d| !d.is_sign_negative() && *d <= MAX_COST_USD)
                .ok_or_else(|| refused(super::Kind::Money))
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<Timestamp, DateTime<Utc>> {
        type Value = DateTime<Utc>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let s = d.deserialize_str(StrVisitor)?;
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| refused(super::Kind::Timestamp))
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<StrOrInt, super::StrOrInt> {
        type Value = super::StrOrInt;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = super::StrOrInt;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(super::Kind::StrOrInt.expected())
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                    Ok(super::StrOrInt::Str(s.to_owned()))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                    Ok(super::StrOrInt::Str(s))
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                    Ok(super::StrOrInt::Int(n.into()))
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                    Ok(super::StrOrInt::Int(n.into()))
                }
            }
            d.deserialize_any(V)
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<IssueRef, Option<super::StrOrInt>> {
        type Value = Option<super::StrOrInt>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            Read::<StrOrInt, super::StrOrInt>::new().deserialize(d).map(Some)
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<Array, Vec<Value>> {
        type Value = Vec<Value>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            Vec::<Value>::deserialize(d)
        }
    }

    impl<'de> DeserializeSeed<'de> for Read<Any, Value> {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            Value::deserialize(d)
        }
    }
}

/// Turns a field borrowed from its input into one that owns its text.
pub trait IntoOwned {
    type Owned;
    fn into_owned(self) -> Self::Owned;
}

macro_rules! owned_as_is {
    ($($t:ty),*) => {$(
        impl IntoOwned for $t {
            type Owned = $t;
            fn into_owned(self) -> $t {
                self
            }
        }
    )*};
}
owned_as_is!(String, i64, f64, Decimal, DateTime<Utc>, StrOrInt, Vec<Value>, Value);

impl IntoOwned for Cow<'_, str> {
    type Owned = Cow<'static, str>;
    fn into_owned(self) -> Cow<'static, str> {
        Cow::Owned(Cow::into_owned(self))
    }
}

impl<T: IntoOwned> IntoOwned for Option<T> {
    type Owned = Option<T::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.map(T::into_owned)
    }
}

/// The Rust type of a field of a kind. A struct declared with a lifetime (`TokenUsage<'a>`)
/// borrows its strings from the input; the others own them.
macro_rules! field_ty {
    ([] Str) => { String };
    ([$lt:lifetime] Str) => { Cow<$lt, str> };
    ([$($lt:lifetime)?] Count) => { i64 };
    ([$($lt:lifetime)?] Tokens) => { i64 };
    ([$($lt:lifetime)?] PositiveInt) => { i64 };
    ([$($lt:lifetime)?] NonNegNumber) => { f64 };
    ([$($lt:lifetime)?] Money) => { Decimal };
    ([$($lt:lifetime)?] Timestamp) => { DateTime<Utc> };
    ([$($lt:lifetime)?] StrOrInt) => { StrOrInt };
    ([$($lt:lifetime)?] IssueRef) => { Option<StrOrInt> };
    ([$($lt:lifetime)?] Array) => { Vec<Value> };
    ([$($lt:lifetime)?] Any) => { Value };
}

/// The struct's type with its lifetime made `'static`.
macro_rules! owned_ty {
    ($name:ident []) => { $name };
    ($name:ident [$lt:lifetime]) => { $name<'static> };
}

/// One type of the catalog: its struct, reading and wire name. `$ltb` is the lifetime of a
/// struct that borrows (`['a]`), or `[]`.
macro_rules! catalog_type {
    (
        $ltb:tt $(#[$doc:meta])* $wire:ident => $name:ident $(<$lt:lifetime>)? {
            required { $($rf:ident: $rk:ident),* }
            optional { $($of:ident: $ok:ident),* }
        }
    ) => {
            #[doc = concat!("The wire name of [`", stringify!($name), "`], for building an event and for SQL binds.")]
            pub const $wire: &str = stringify!($wire);

            $(#[$doc])*
            #[doc = ""]
            #[doc = concat!("`", stringify!($wire), "`: requires ",
                $("`", stringify!($rf), "` (", stringify!($rk), ") ",)*
                "; allows ", $("`", stringify!($of), "` (", stringify!($ok), ") ",)* ".")]
            #[derive(Debug, Clone, PartialEq, serde::Serialize)]
            pub struct $name $(<$lt>)? {
                $(pub $rf: field_ty!($ltb $rk),)*
                $(
                    #[serde(skip_serializing_if = "Option::is_none")]
                    pub $of: Option<field_ty!($ltb $ok)>,
                )*
            }

            impl<'de $(: $lt, $lt)?> Deserialize<'de> for $name $(<$lt>)? {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    d.deserialize_map(MapVisitor::<Self>(PhantomData))
                }
            }

            impl<'de $(: $lt, $lt)?> Visitor<'de> for MapVisitor<$name $(<$lt>)?> {
                type Value = $name $(<$lt>)?;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(concat!("the data of ", stringify!($wire), " (a JSON object)"))
                }

                // Unknown keys are passed over; a repeated key keeps its last value, as a
                // parsed `data` does.
                #[allow(unused_mut)]
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    $(let mut $rf = None;)*
                    $(let mut $of = None;)*
                    while let Some(key) = map.next_key_seed(Key)? {
                        match &*key {
                            $(stringify!($rf) => {
                                $rf = Some(map.next_value_seed(Field(stringify!($rf),
                                    rule::Read::<rule::$rk, field_ty!($ltb $rk)>::new()))?);
                            })*
                            $(stringify!($of) => {
                                $of = map.next_value_seed(Field(stringify!($of),
                                    rule::Opt(rule::Read::<rule::$ok, field_ty!($ltb $ok)>::new())))?;
                            })*
                            _ => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok($name {
                        $($rf: $rf.ok_or_else(|| de::Error::missing_field(stringify!($rf)))?,)*
                        $($of,)*
                    })
                }
            }

            impl $(<$lt>)? $name $(<$lt>)? {
                /// The wire name.
                pub const NAME: &'static str = stringify!($wire);

                /// The same event, owning its strings.
                pub fn into_owned(self) -> owned_ty!($name $ltb) {
                    $name {
                        $($rf: IntoOwned::into_owned(self.$rf),)*
                        $($of: IntoOwned::into_owned(self.$of),)*
                    }
                }
            }
    };
}

macro_rules! catalog {
    ($(
        $(#[$doc:meta])*
        $wire:ident => $name:ident $(<$lt:lifetime>)? {
            required { $($rf:ident: $rk:ident),* $(,)? }
            optional { $($of:ident: $ok:ident),* $(,)? }
        }
    )*) => {
        $(
            catalog_type! {
                [$($lt)?] $(#[$doc])* $wire => $name $(<$lt>)? {
                    required { $($rf: $rk),* }
                    optional { $($of: $ok),* }
                }
            }
        )*
        /// The catalog's event types.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $($name,)*
        }

        impl EventType {
            /// Every type of the catalog, in the catalog's order.
            pub const ALL: &'static [EventType] = &[$(EventType::$name,)*];

            /// The wire name (`ISSUE_ASSIGNED`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(EventType::$name => stringify!($wire),)*
                }
            }

            /// The type of a wire name; `None` for a type the catalog does not hold.
            pub fn from_name(name: &str) -> Option<EventType> {
                match name {
                    $(stringify!($wire) => Some(EventType::$name),)*
                    _ => None,
                }
            }

            /// The fields a refusal is worded from, required then optional, in the catalog's order.
            pub fn fields(self) -> Fields {
                match self {
                    $(EventType::$name => Fields {
                        required: &[$((stringify!($rf), Kind::$rk),)*],
                        optional: &[$((stringify!($of), Kind::$ok),)*],
                    },)*
                }
            }

            /// Reads `data` as this type. Every type has only version 1 so far, and any
            /// version is read by its rules (as ingest always did). A new version of a type is an
            /// arm before the others, reading that shape into the same struct:
            /// `(EventType::X, 2) => Event::X(XV2::deserialize(data)?.into())`.
            fn read<'a>(self, schema_version: i32, data: &'a Value) -> Result<Event<'a>, serde_json::Error> {
                let _ = schema_version;
                Ok(match self {
                    $(EventType::$name => Event::$name($name::deserialize(data)?),)*
                })
            }
        }

        /// One event's data, typed by its event type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event<'a> {
            $($name($name $(<$lt>)?),)*
            /// A type the rig added after this catalog: accepted as it is, read by no one here.
            Other,
        }

        impl Event<'_> {
            /// The catalog type; `None` for [`Event::Other`].
            pub fn event_type(&self) -> Option<EventType> {
                match self {
                    $(Event::$name(_) => Some(EventType::$name),)*
                    Event::Other => None,
                }
            }

            /// The same event, owning its strings.
            pub fn into_owned(self) -> Event<'static> {
                match self {
                    $(Event::$name(e) => Event::$name(e.into_owned()),)*
                    Event::Other => Event::Other,
                }
            }
        }
    };
}

/// Reads each struct of the catalog from a JSON object.
struct MapVisitor<T>(PhantomData<T>);

/// A key of `data`, borrowed when it can be.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// A field's value, read by its rule; a refusal names the field (`data.input_tokens must be …`).
struct Field<S>(&'static str, S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Field<S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let name = self.0;
        self.1
            .deserialize(d)
            .map_err(|e| de::Error::custom(format_args!("data.{name}: {e}")))
    }
}

/// The fields of a type, with their kinds: what a refusal is worded from.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub required: &'static [(&'static str, Kind)],
    pub optional: &'static [(&'static str, Kind)],
}

catalog! {
    /// A planner approved the issue for agents to take.
    ISSUE_APPROVED => IssueApproved {
        required {}
        optional { title: Str, priority: Any, depends_on: Array }
    }
    /// An agent claimed the issue (ingest refuses a claim on an issue someone holds).
    ISSUE_ASSIGNED => IssueAssigned {
        required { agent_id: Str }
        optional { attempt: Count }
    }
    /// The issue went back to the queue.
    ISSUE_UNASSIGNED => IssueUnassigned {
        required { reason: Str }
        optional { agent_id: Str }
    }
    /// The holder started work.
    WORK_STARTED => WorkStarted {
        required { agent_id: Str }
        optional {}
    }
    /// A sign of life, on the agent's stream (naming its issue) or on the issue's.
    HEARTBEAT => Heartbeat {
        required { agent_id: Str }
        optional { status: Str, current_issue: IssueRef }
    }
    /// The holder was silent for too long (appended by rig-stale-heartbeat).
    AGENT_STUCK => AgentStuck {
        required { agent_id: Str }
        optional { reason: Str, elapsed_seconds: NonNegNumber, last_heartbeat_at: Timestamp }
    }
    BRANCH_CREATED => BranchCreated {
        required { branch: Str }
        optional { agent_id: Str }
    }
    PR_CREATED => PrCreated {
        required { pr_number: PositiveInt }
        optional { pr_url: Str, branch: Str, agent_id: Str }
    }
    CI_PASSED => CiPassed {
        required {}
        optional { pr_number: PositiveInt, run_id: StrOrInt }
    }
    /// `failed_checks`: check names, or whatever the CI reports of each check (the notifier
    /// shows any).
    CI_FAILED => CiFailed {
        required {}
        optional { pr_number: PositiveInt, run_id: StrOrInt, failed_checks: Array }
    }
    REVIEW_ASSIGNED => ReviewAssigned {
        required {}
        optional { reviewer: Str, pr_number: PositiveInt }
    }
    REVIEW_PASSED => ReviewPassed {
        required {}
        optional { reviewer: Str, pr_number: PositiveInt }
    }
    REVIEW_DISPUTED => ReviewDisputed {
        required {}
        optional { reviewer: Str, pr_number: PositiveInt, attempt: Count }
    }
    HUMAN_GATE_TRIGGERED => HumanGateTriggered {
        required { reason: Str }
        optional { pr_number: PositiveInt }
    }
    ESCALATED => Escalated {
        required { reason: Str }
        optional { attempts: Count }
    }
    MERGED => Merged {
        required {}
        optional { pr_number: PositiveInt, merge_sha: Str }
    }
    ISSUE_DONE => IssueDone {
        required {}
        optional { duration_minutes: NonNegNumber }
    }
    /// One model call's tokens. Borrows its strings: the token and cost projectors read it
    /// straight from the stored text ([`TokenUsage::from_json_text`]).
    TOKEN_USAGE => TokenUsage<'a> {
        required { agent_id: Str, model: Str, input_tokens: Tokens, output_tokens: Tokens }
        optional { cache_read_tokens: Tokens, cache_write_tokens: Tokens, cost_usd: Money }
    }
}

impl EventType {
    /// Whether ingest holds some field of this type to a bound that reading does not.
    fn door_bounds(self) -> bool {
        let f = self.fields();
        f.required.iter().chain(f.optional).any(|(_, k)| *k == Kind::Tokens)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'a> Event<'a> {
    /// Admits an event at the door (ingest): reads its data by its type and schema version,
    /// with every rule of the catalog. A type outside the catalog is [`Event::Other`], its data
    /// unread. The error is the refusal ingest answers with (`ISSUE_ASSIGNED requires
    /// data.agent_id (a non-empty string)`), a contract with clients.
    pub fn parse(event_type: &str, schema_version: i32, data: &'a Value) -> Result<Event<'a>, String> {
        if !crate::is_upper_snake(event_type) {
            return Err(format!(
                "type {:?} is not UPPER_SNAKE (for example \"ISSUE_ASSIGNED\")",
                event_type.chars().take(100).collect::<String>()
            ));
        }
        let Some(obj) = data.as_object() else {
            return Err(format!("data must be a JSON object, found {}", json_kind(data)));
        };
        let Some(ty) = EventType::from_name(event_type) else {
            return Ok(Event::Other);
        };
        match ty.read(schema_version, data) {
            Ok(event) => match ty.door_bounds() {
                true => refusal(ty, obj, Kind::accepts).map_or(Ok(event), Err),
                false => Ok(event),
            },
            Err(e) => Err(refusal(ty, obj, Kind::accepts).unwrap_or_else(|| e.to_string())),
        }
    }

    /// Reads a stored event's data by its type and schema version: what every reader of the
    /// log goes through. The rules are the door's but for its bounds on token counts; the error
    /// names the field and shows its value (`TOKEN_USAGE: data.input_tokens must be an integer
    /// >= 0, found "lots"`), for the operator of a consumer it stops.
    pub fn read(event_type: &str, schema_version: i32, data: &'a Value) -> Result<Event<'a>, String> {
        let Some(ty) = EventType::from_name(event_type) else {
            return Ok(Event::Other);
        };
        ty.read(schema_version, data).map_err(|e| {
            let refused = match data.as_object() {
                Some(obj) => read_refusal(ty, obj),
                None => Some(format!("{}: data is not a JSON object", ty.name())),
            };
            refused.unwrap_or_else(|| format!("{}: {e}", ty.name()))
        })
    }
}

/// Why a stored event of type `ty` does not read, worded for an operator.
fn read_refusal(ty: EventType, obj: &Map<String, Value>) -> Option<String> {
    let name = ty.name();
    let fields = ty.fields();
    let wrong = |field: &str, kind: Kind, v: &Value| {
        format!(
            "{name}: data.{field} must be {}, found {}",
            kind.readable_as(),
            short(v)
        )
    };
    for (field, kind) in fields.required {
        match obj.get(*field) {
            None | Some(Value::Null) => return Some(format!("{name}: data.{field} is missing")),
            Some(v) if !kind.readable(v) => return Some(wrong(field, *kind, v)),
            _ => {}
        }
    }
    fields.optional.iter().find_map(|(field, kind)| {
        obj.get(*field)
            .filter(|v| !v.is_null() && !kind.readable(v))
            .map(|v| wrong(field, *kind, v))
    })
}

/// A value for an error message, cut short: poison data can be large.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 60 {
        s
    } else {
        format!("{}…", s.chars().take(60).collect::<String>())
    }
}

/// The refusal for `data` of type `ty`: the first required field missing or of the wrong
/// kind, then the first optional field of the wrong kind. `None` when every field is right.
fn refusal(ty: EventType, obj: &Map<String, Value>, accepts: fn(Kind, &Value) -> bool) -> Option<String> {
    let name = ty.name();
    let fields = ty.fields();
    for (field, kind) in fields.required {
        match obj.get(*field) {
            None | Some(Value::Null) => {
                return Some(format!("{name} requires data.{field} ({})", kind.expected()));
            }
            Some(v) if !accepts(*kind, v) => return Some(wrong_type(name, field, *kind, v)),
            _ => {}
        }
    }
    for (field, kind) in fields.optional {
        if let Some(v) = obj.get(*field) {
            if !v.is_null() && !accepts(*kind, v) {
                return Some(wrong_type(name, field, *kind, v));
            }
        }
    }
    None
}

fn wrong_type(event_type: &str, field: &str, kind: Kind, v: &Value) -> String {
    format!(
        "{event_type}: data.{field} must be {}, found {}",
        kind.expected(),
        json_kind(v)
    )
}

pub(crate) fn json_kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.is_empty() => "an empty string".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> TokenUsage<'a> {
    /// Reads a `TOKEN_USAGE` data object already parsed, borrowing its strings.
    pub fn from_value(schema_version: i32, data: &'a Value) -> Result<TokenUsage<'a>, String> {
        match Event::read(TOKEN_USAGE, schema_version, data)? {
            Event::TokenUsage(u) => Ok(u),
            _ => Err("TOKEN_USAGE: not read as a token usage".to_owned()),
        }
    }

    /// Reads a `TOKEN_USAGE` data object straight from its JSON text, borrowing its strings
    /// (what a lean consumer reads, without building a `Value`). The same struct and rules as
    /// [`Event::read`], and the same error (the text is then parsed to word it).
    pub fn from_json_text(schema_version: i32, text: &'a str) -> Result<TokenUsage<'a>, String> {
        let _ = schema_version;
        let mut de = serde_json::Deserializer::from_str(text);
        match TokenUsage::deserialize(&mut de).and_then(|u| de.end().map(|()| u)) {
            Ok(u) => Ok(u),
            Err(serde_error) => {
                let data: Value =
                    serde_json::from_str(text).map_err(|e| format!("TOKEN_USAGE: data is not JSON: {e}"))?;
                match Event::read(TOKEN_USAGE, schema_version, &data) {
                    Err(refused) => Err(refused),
                    // Not reached: the text and its parse are read by the same rules.
                    Ok(_) => Err(format!("TOKEN_USAGE: {serde_error}")),
                }
            }
        }
    }
}

/// What a heartbeat's `current_issue` names. The one reading of that field: the inline
/// `agent_status` and the stale-heartbeat projection both go through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrentIssue<'h> {
    /// No `current_issue`: the heartbeat says nothing of the agent's issue.
    Unsaid,
    /// `null`: the agent is on no issue.
    Cleared,
    /// An issue stream id, in its canonical form (`Acme/Widgets#42` is `acme/widgets#42`).
    Stream(String),
    /// A bare issue number: the issue with that number its agent works on.
    Number(i64),
    /// Something that names no issue stream (another string, a number no issue has), as said.
    Unknown(Cow<'h, str>),
}

impl Heartbeat {
    /// What `current_issue` names. A string is read as a stream id (surrounding blanks
    /// ignored), a positive integer as an issue number.
    pub fn current_issue(&self) -> CurrentIssue<'_> {
        match &self.current_issue {
            None => CurrentIssue::Unsaid,
            Some(None) => CurrentIssue::Cleared,
            Some(Some(StrOrInt::Str(s))) => match crate::StreamId::parse(s.trim()) {
                Ok(id @ crate::StreamId::Issue { .. }) => CurrentIssue::Stream(id.to_string()),
                _ => CurrentIssue::Unknown(Cow::Borrowed(s)),
            },
            Some(Some(StrOrInt::Int(n))) => match i64::try_from(*n) {
                Ok(n) if n > 0 => CurrentIssue::Number(n),
                _ => CurrentIssue::Unknown(Cow::Owned(n.to_string())),
            },
        }
    }
}

impl CurrentIssue<'_> {
    /// Whether it names the issue stream `stream_id` (canonical) of its agent: that stream id,
    /// or that stream's issue number.
    pub fn names(&self, stream_id: &str) -> bool {
        match self {
            CurrentIssue::Stream(s) => s == stream_id,
            CurrentIssue::Number(n) => {
                crate::StreamId::parse(stream_id).ok().and_then(|s| s.issue_number()) == Some(*n)
            }
            _ => false,
        }
    }

    /// The stream its agent is on after this heartbeat, sent on stream `on` when the agent was
    /// on `was`: the issue stream named; a bare number is resolved against the heartbeat's own
    /// issue stream, then against `was`, and kept as said when neither has it; `null` clears
    /// it; an unsaid one is the heartbeat's issue stream, or `was` on the agent's own stream.
    pub fn resolve(&self, on: &str, was: Option<&str>) -> Option<String> {
        let on_issue = !on.starts_with("agent:");
        match self {
            CurrentIssue::Unsaid if on_issue => Some(on.to_owned()),
            CurrentIssue::Unsaid => was.map(str::to_owned),
            CurrentIssue::Cleared => None,
            CurrentIssue::Stream(s) => Some(s.clone()),
            CurrentIssue::Number(n) => {
                if on_issue && self.names(on) {
                    Some(on.to_owned())
                } else if let Some(was) = was.filter(|w| self.names(w)) {
                    Some(was.to_owned())
                } else {
                    Some(n.to_string())
                }
            }
            CurrentIssue::Unknown(s) => Some(s.clone().into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_has_one_wire_name_both_ways() {
        assert_eq!(EventType::ALL.len(), 18);
        for ty in EventType::ALL {
            assert_eq!(EventType::from_name(ty.name()), Some(*ty));
        }
        assert_eq!(EventType::TokenUsage.name(), TOKEN_USAGE);
        assert_eq!(EventType::IssueAssigned.to_string(), "ISSUE_ASSIGNED");
        assert_eq!(EventType::from_name("SOMETHING_NEW"), None);
        assert_eq!(Event::parse("SOMETHING_NEW", 1, &json!({"x": 1})), Ok(Event::Other));
    }

    #[test]
    fn refusals_are_worded_as_clients_know_them() {
        let refused = |ty: &str, data: Value| Event::parse(ty, 1, &data).unwrap_err();
        assert_eq!(
            refused("ISSUE_ASSIGNED", json!({"agent_id": 5})),
            "ISSUE_ASSIGNED: data.agent_id must be a non-empty string, found number 5"
        );
        assert_eq!(
            refused("ISSUE_ASSIGNED", json!({"attempt": -1})),
            "ISSUE_ASSIGNED requires data.agent_id (a non-empty string)"
        );
        assert_eq!(
            refused("ISSUE_ASSIGNED", json!({"agent_id": "a", "attempt": 1.5})),
            "ISSUE_ASSIGNED: data.attempt must be an integer from 0 to 9223372036854775807, found number 1.5"
        );
        assert_eq!(
            refused("HEARTBEAT", json!({"agent_id": "a", "current_issue": [1]})),
            "HEARTBEAT: data.current_issue must be a string or an integer, found an array"
        );
        assert_eq!(
            refused(
                "AGENT_STUCK",
                json!({"agent_id": "a", "last_heartbeat_at": "yesterday"})
            ),
            "AGENT_STUCK: data.last_heartbeat_at must be an RFC 3339 timestamp string, found a string"
        );
        assert_eq!(
            refused("PR_CREATED", json!({"pr_number": 0})),
            "PR_CREATED: data.pr_number must be an integer >= 1, found number 0"
        );
        assert_eq!(
            refused("ISSUE_DONE", json!([])),
            "data must be a JSON object, found an array"
        );
        // The door's bound on token counts, which reading does not hold to.
        let usage = json!({"agent_id": "a", "model": "m", "input_tokens": MAX_TOKENS + 1, "output_tokens": 1});
        assert_eq!(
            refused("TOKEN_USAGE", usage.clone()),
            "TOKEN_USAGE: data.input_tokens must be an integer from 0 to 1000000000000, found number 1000000000001"
        );
        assert!(Event::read(TOKEN_USAGE, 1, &usage).is_ok());
    }

    #[test]
    fn typed_fields_read_what_the_catalog_accepts() {
        let data = json!({"agent_id": "a", "model": "m", "input_tokens": 3, "output_tokens": 4,
                          "cache_read_tokens": null, "cost_usd": "0.30", "other": true});
        let Event::TokenUsage(u) = Event::parse(TOKEN_USAGE, 1, &data).unwrap() else {
            panic!("not a token usage")
        };
        assert_eq!((u.input_tokens, u.output_tokens, u.cache_read_tokens), (3, 4, None));
        assert_eq!(u.cost_usd.unwrap().to_string(), "0.30");
        let Event::AgentStuck(s) = Event::parse(
            AGENT_STUCK,
            1,
            &json!({"agent_id": "a", "elapsed_seconds": 20, "last_heartbeat_at": "2026-01-02T03:04:05+01:00"}),
        )
        .unwrap() else {
            panic!("not a stuck agent")
        };
        assert_eq!(s.elapsed_seconds, Some(20.0));
        assert_eq!(s.last_heartbeat_at.unwrap().to_rfc3339(), "2026-01-02T02:04:05+00:00");
        let Event::CiPassed(c) = Event::parse(CI_PASSED, 1, &json!({"run_id": u64::MAX})).unwrap() else {
            panic!("not a CI pass")
        };
        assert_eq!(c.run_id.unwrap().to_string(), u64::MAX.to_string());
        // Read from text, the same struct and the same error.
        let text = r#"{"agent_id": "a", "model": "m", "input_tokens": 3, "output_tokens": 4, "cost_usd": 0.1}"#;
        let from_text = TokenUsage::from_json_text(1, text).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(from_text, TokenUsage::from_value(1, &value).unwrap());
        assert_eq!(
            TokenUsage::from_json_text(1, r#"{"agent_id": "a", "model": "m", "input_tokens": 3}"#).unwrap_err(),
            "TOKEN_USAGE: data.output_tokens is missing"
        );
    }

    fn heartbeat(data: Value) -> Heartbeat {
        match Event::parse(HEARTBEAT, 1, &data).unwrap() {
            Event::Heartbeat(h) => h,
            _ => panic!("not a heartbeat"),
        }
    }

    #[test]
    fn a_heartbeat_names_its_issue_in_one_way_for_every_reader() {
        let named = |current: Value| heartbeat(json!({"agent_id": "a", "current_issue": current}));
        assert_eq!(
            heartbeat(json!({"agent_id": "a"})).current_issue(),
            CurrentIssue::Unsaid
        );
        assert_eq!(named(Value::Null).current_issue(), CurrentIssue::Cleared);
        for s in ["Acme/Widgets#3", " acme/widgets#3 "] {
            assert_eq!(
                named(json!(s)).current_issue(),
                CurrentIssue::Stream("acme/widgets#3".into())
            );
        }
        assert_eq!(named(json!(3)).current_issue(), CurrentIssue::Number(3));
        for (v, said) in [
            (json!("agent:a"), "agent:a"),
            (json!("nope"), "nope"),
            (json!(0), "0"),
            (json!(-2), "-2"),
            (json!(u64::MAX), "18446744073709551615"),
        ] {
            assert_eq!(named(v).current_issue(), CurrentIssue::Unknown(said.into()));
        }

        // The stream the agent is on afterwards.
        let on_issue = "acme/widgets#3";
        let number = named(json!(3));
        let n = number.current_issue();
        assert!(n.names("acme/widgets#3") && n.names("acme/gadgets#3") && !n.names("acme/widgets#4"));
        assert_eq!(n.resolve(on_issue, None).as_deref(), Some(on_issue));
        assert_eq!(
            n.resolve("agent:a", Some("acme/gadgets#3")).as_deref(),
            Some("acme/gadgets#3")
        );
        assert_eq!(n.resolve("agent:a", Some("acme/gadgets#4")).as_deref(), Some("3"));
        let unsaid = heartbeat(json!({"agent_id": "a"}));
        assert_eq!(
            unsaid.current_issue().resolve(on_issue, Some("x/y#1")).as_deref(),
            Some(on_issue)
        );
        assert_eq!(
            unsaid.current_issue().resolve("agent:a", Some("x/y#1")).as_deref(),
            Some("x/y#1")
        );
        assert_eq!(
            named(Value::Null).current_issue().resolve(on_issue, Some("x/y#1")),
            None
        );
        assert_eq!(
            named(json!("nope")).current_issue().resolve("agent:a", None).as_deref(),
            Some("nope")
        );
    }
}
