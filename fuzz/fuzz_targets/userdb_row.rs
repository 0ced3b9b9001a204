//! A SQL row or LDAP entry, as a database sends it, made into a passdb
//! record and tried with a password: never panics, a locked record matches
//! nothing, a `user` column is only taken when it is a valid user name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardpop::auth::fuzz_userdb_row(data);
});
