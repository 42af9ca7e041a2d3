//! Guest-side SDK for screamer plugins.
//!
//! Place in the flow: plugins run between record decoding and the sink. The WIT world and
//! the runtime land with the plugin-runtime work; this crate reserves the name and the
//! workspace slot so the layout matches the architecture from the start.
