fn main() {
    match testfs::fuse_available() {
        Ok(()) => println!("fuse available"),
        Err(e) => println!("not available: {e}"),
    }
}
