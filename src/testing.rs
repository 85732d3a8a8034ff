//! placeholder: being written (fake platform for tests)
