fn main() {
    std::process::exit(cvm_backup::app::main());
}
