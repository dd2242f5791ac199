//! The filter stage: JSON-logic expressions ([`expr`]) and the fan-out of
//! one event to the webhooks that should receive it ([`fanout`]).

pub mod expr;
pub mod fanout;
pub mod hash;

pub use expr::{Converted, Expr, ExprError, Scope};
pub use fanout::{fan_out, Decision, Verdict};
pub use hash::HashKey;
