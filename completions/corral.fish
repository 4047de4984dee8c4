# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_corral_global_optspecs
    string join \n c/config= t/test T/print-config s/signal= no-wait d/daemon h/help V/version
end

function __fish_corral_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_corral_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_corral_using_subcommand
    set -l cmd (__fish_corral_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c corral -n "__fish_corral_needs_command" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_needs_command" -s s -l signal -d 'Send a command to the running master and wait for its outcome' -r -f -a "reload\t'Re-read the config; start a new generation; drain the old one'
quit\t'Graceful stop: drain connections, then exit'
stop\t'Fast stop: close everything, exit'
reopen\t'Reopen log files'
upgrade\t'Binary upgrade: start the binary on disk as a new master; roll back if it fails'"
complete -c corral -n "__fish_corral_needs_command" -s t -l test -d 'Check the configuration and exit (0 if it is valid). Not with `-s`: a check that also signalled the master would act on a config it had not checked'
complete -c corral -n "__fish_corral_needs_command" -s T -l print-config -d 'Check the configuration, then print the effective one (defaults, then the file, then `CORRAL_*` environment variables), each value with where it came from, and exit'
complete -c corral -n "__fish_corral_needs_command" -l no-wait -d 'With `-s reload` or `-s upgrade`: return as soon as the new generation (or master) serves, without following the old one\'s connections until it is gone'
complete -c corral -n "__fish_corral_needs_command" -s d -l daemon -d 'Run in the background (same as `[master] daemon = true`); returns once the master serves, or with its error'
complete -c corral -n "__fish_corral_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c corral -n "__fish_corral_needs_command" -s V -l version -d 'Print version'
complete -c corral -n "__fish_corral_needs_command" -f -a "status" -d 'Show every worker of the running master'
complete -c corral -n "__fish_corral_needs_command" -f -a "fault" -d 'Make a worker of the running master fail for real (needs `[master] fault_injection = true`) and print how the master coped'
complete -c corral -n "__fish_corral_needs_command" -f -a "top" -d 'A live view of the running master: workers with their rates, generations with their moves, TLS, and recent events (q quits, 1-9 sort, r reverses)'
complete -c corral -n "__fish_corral_needs_command" -f -a "publish" -d 'Publish MESSAGE to every connection subscribed to TOPIC, in every worker (services subscribe connections with `Io::subscribe`); exits 0 once the master handed it to every worker'
complete -c corral -n "__fish_corral_needs_command" -f -a "completions" -d 'Print a shell completion script (e.g. `corral completions bash > /etc/bash_completion.d/corral`)'
complete -c corral -n "__fish_corral_needs_command" -f -a "man" -d 'Write the man page (roff) to standard output, or to a file'
complete -c corral -n "__fish_corral_needs_command" -f -a "chaos" -d 'Inject random faults on a schedule and report detection and recovery'
complete -c corral -n "__fish_corral_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c corral -n "__fish_corral_using_subcommand status" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_using_subcommand status" -l json -d 'Print JSON instead of a table'
complete -c corral -n "__fish_corral_using_subcommand status" -l prometheus -d 'Print the metrics in the Prometheus text format (as `GET /metrics` on a `service = "metrics"` listener), e.g. for node_exporter\'s textfile collector'
complete -c corral -n "__fish_corral_using_subcommand status" -s h -l help -d 'Print help'
complete -c corral -n "__fish_corral_using_subcommand fault" -l slot -d 'The ready worker of this slot (current generation)' -r
complete -c corral -n "__fish_corral_using_subcommand fault" -l generation -d 'A random ready worker of this generation' -r
complete -c corral -n "__fish_corral_using_subcommand fault" -l timeout -d 'How long to wait for the outcome' -r
complete -c corral -n "__fish_corral_using_subcommand fault" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_using_subcommand fault" -l random -d 'A random ready worker of the current generation (the default)'
complete -c corral -n "__fish_corral_using_subcommand fault" -l json -d 'Print the outcome as one JSON object'
complete -c corral -n "__fish_corral_using_subcommand fault" -s h -l help -d 'Print help'
complete -c corral -n "__fish_corral_using_subcommand top" -l interval -d 'Time between polls of the master' -r
complete -c corral -n "__fish_corral_using_subcommand top" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_using_subcommand top" -l once -d 'Print one frame as plain text and exit (it samples twice, one interval apart, so that the rates are real)'
complete -c corral -n "__fish_corral_using_subcommand top" -s h -l help -d 'Print help'
complete -c corral -n "__fish_corral_using_subcommand publish" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_using_subcommand publish" -s h -l help -d 'Print help'
complete -c corral -n "__fish_corral_using_subcommand completions" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_using_subcommand completions" -s h -l help -d 'Print help'
complete -c corral -n "__fish_corral_using_subcommand man" -s o -l output -d 'Write it here instead of standard output' -r -F
complete -c corral -n "__fish_corral_using_subcommand man" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_using_subcommand man" -s h -l help -d 'Print help'
complete -c corral -n "__fish_corral_using_subcommand chaos" -l duration -d 'How long to keep injecting' -r
complete -c corral -n "__fish_corral_using_subcommand chaos" -l every -d 'Time between faults' -r
complete -c corral -n "__fish_corral_using_subcommand chaos" -l faults -d 'Comma-separated kinds to pick from (`leak:64`, `slow:20` give arguments). Default: kill,hang, and leak when [master] max_worker_rss is set' -r
complete -c corral -n "__fish_corral_using_subcommand chaos" -l max-recovery -d 'Exit non-zero if any recovery took longer' -r
complete -c corral -n "__fish_corral_using_subcommand chaos" -l timeout -d 'How long each fault may take to resolve' -r
complete -c corral -n "__fish_corral_using_subcommand chaos" -s c -l config -d 'Configuration file' -r -F
complete -c corral -n "__fish_corral_using_subcommand chaos" -l json -d 'Print the report as JSON'
complete -c corral -n "__fish_corral_using_subcommand chaos" -s h -l help -d 'Print help'
