//! HookRelay HTTP API.
