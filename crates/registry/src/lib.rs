//! placeholder: arrives with its issue.
