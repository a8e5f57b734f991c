fn main() -> std::process::ExitCode {
    rwkv_chat::cli::main()
}
