//! A valid WASI 0.2 component of another world (`wasi:cli/command`): the host must refuse
//! it as a plugin and say what it exports.

fn main() {
    println!("I am not a screamer plugin");
}
