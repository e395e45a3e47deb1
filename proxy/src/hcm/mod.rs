//! The HTTP connection manager: what happens to an HTTP request between the downstream codec
//! that read it and the upstream connection that carries it, the same whichever codec it came
//! through.

#[cfg(test)]
mod tests;
