fn main() -> std::process::ExitCode {
    taphook::cli::main()
}
