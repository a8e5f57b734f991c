#[global_allocator]
static ALLOC: rwkv_chat::alloc::HugePages = rwkv_chat::alloc::HugePages;

fn main() -> std::process::ExitCode {
    rwkv_chat::cli::main()
}
