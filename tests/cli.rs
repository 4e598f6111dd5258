//! The `philotes` command line, run as a user would run it.
