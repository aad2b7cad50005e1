// audioldm-host: a C++ host of the audioldm-trt C API, writing what `audioldm-trt generate` writes.
//
//   audioldm-host --engine DIR --prompt P --output F.wav [--seed S] [--duration D] [--steps N] [--guidance G]
//                 [--negative-prompt P] [--scheduler NAME] [--backend B] [--threads N] [--precision P]
//
// Exit status: 0 on success, 2 for a bad command line or argument, 130 when interrupted (SIGINT cancels the
// generation and nothing is written), 1 for any other failure; each error is one line on stderr.

#include "audioldm_trt.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

namespace {

const char *const usage =
    "usage: audioldm-host --engine DIR --prompt P --output F.wav [--seed S] [--duration D] [--steps N] "
    "[--guidance G] [--negative-prompt P] [--scheduler NAME] [--backend B] [--threads N] [--precision P]";

/// Set by SIGINT and read by the progress callback between UNet calls: an interrupt at any time before the last
/// one cancels the generation, and nothing is written.
volatile std::sig_atomic_t interrupted = 0;

extern "C" void interrupt(int) { interrupted = 1; }

int stop_when_interrupted(void *, int, int) { return interrupted; }

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

int positive_int(const std::string &option, const std::string &text) {
    char *end = nullptr;
    errno = 0;
    long value = std::strtol(text.c_str(), &end, 10);
    if (end == text.c_str() || *end != '\0' || errno != 0 || value < 1 || value > 1 << 30) {
        throw UsageError("argument " + option + ": must be a positive integer, got " + text);
    }
    return static_cast<int>(value);
}

double finite_double(const std::string &option, const std::string &text) {
    char *end = nullptr;
    double value = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || *end != '\0' || !std::isfinite(value)) {
        throw UsageError("argument " + option + ": must be a finite number, got " + text);
    }
    return value;
}

/// torch's manual_seed range, [-2**63, 2**64): a negative seed s is s + 2**64 for the C API (the same stream).
uint64_t seed(const std::string &text) {
    char *end = nullptr;
    errno = 0;
    uint64_t value = text.rfind('-', 0) == 0 ? static_cast<uint64_t>(std::strtoll(text.c_str(), &end, 10))
                                              : std::strtoull(text.c_str(), &end, 10);
    if (end == text.c_str() || *end != '\0' || errno != 0) {
        throw UsageError("argument --seed: must be an integer in [-2**63, 2**64), got " + text);
    }
    return value;
}

/// --option value pairs; each option at most once.
std::map<std::string, std::string> parse(int argc, char **argv) {
    static const char *const known[] = {"--engine", "--prompt", "--output", "--seed", "--duration", "--steps",
                                        "--guidance", "--negative-prompt", "--scheduler", "--backend", "--threads",
                                        "--precision"};
    std::map<std::string, std::string> options;
    for (int i = 1; i < argc; i += 2) {
        std::string option = argv[i];
        if (option == "--help" || option == "-h") throw UsageError(usage);
        if (std::find(std::begin(known), std::end(known), option) == std::end(known)) {
            throw UsageError("unrecognized argument " + option);
        }
        if (i + 1 >= argc) throw UsageError("argument " + option + ": expected a value");
        if (!options.emplace(option, argv[i + 1]).second) throw UsageError("argument " + option + " given twice");
    }
    for (const char *required : {"--engine", "--prompt", "--output"}) {
        if (options.count(required) == 0) throw UsageError(std::string("the argument ") + required + " is required");
    }
    const std::string &output = options["--output"];
    size_t dot = output.find_last_of('.');
    std::string suffix = dot == std::string::npos ? "" : output.substr(dot);
    for (char &c : suffix) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (suffix != ".wav" && suffix != ".flac") {  // before minutes of work, not after
        throw UsageError("--output must end in .wav or .flac, got " + output);
    }
    return options;
}

/// One-line error and the exit status `audioldm-trt generate` uses: 2 for a bad argument, 1 otherwise.
int fail(audioldm_trt_status status, char *message) {
    std::fprintf(stderr, "audioldm-host: error: %s\n", message != nullptr ? message : "out of memory");
    audioldm_trt_string_free(message);
    return status == AUDIOLDM_TRT_INVALID_ARGUMENT ? 2 : status == AUDIOLDM_TRT_CANCELLED ? 130 : 1;
}

}  // namespace

int main(int argc, char **argv) {
    std::map<std::string, std::string> options;
    audioldm_trt_generate_params params;
    audioldm_trt_generate_params_init(&params, sizeof params);
    audioldm_trt_load_params load;
    audioldm_trt_load_params_init(&load, sizeof load);
    try {
        options = parse(argc, argv);
        if (options.count("--seed") != 0) {
            params.seeded = 1;
            params.seed = seed(options["--seed"]);
        }
        if (options.count("--duration") != 0) params.duration_s = finite_double("--duration", options["--duration"]);
        if (options.count("--steps") != 0) params.steps = positive_int("--steps", options["--steps"]);
        if (options.count("--guidance") != 0) params.guidance = finite_double("--guidance", options["--guidance"]);
        if (options.count("--threads") != 0) load.threads = positive_int("--threads", options["--threads"]);
    } catch (const UsageError &error) {
        std::fprintf(stderr, "audioldm-host: %s\n", error.what());
        return 2;
    }
    params.prompt = options["--prompt"].c_str();
    if (options.count("--negative-prompt") != 0) params.negative_prompt = options["--negative-prompt"].c_str();
    auto optional = [&](const char *name) { return options.count(name) != 0 ? options[name].c_str() : nullptr; };
    load.backend = optional("--backend");
    load.scheduler = optional("--scheduler");
    load.precision = optional("--precision");

    char *error = nullptr;
    audioldm_trt_engine *loaded = nullptr;
    audioldm_trt_status status = audioldm_trt_engine_load(options["--engine"].c_str(), &load, &loaded, &error);
    if (status != AUDIOLDM_TRT_OK) return fail(status, error);
    std::unique_ptr<audioldm_trt_engine, decltype(&audioldm_trt_engine_free)> engine(loaded,
                                                                                     &audioldm_trt_engine_free);
    std::signal(SIGINT, interrupt);
    params.progress = stop_when_interrupted;
    std::printf("running on %s\n", audioldm_trt_engine_backend(engine.get()));
    std::fflush(stdout);

    float *samples = nullptr;
    size_t waveforms = 0;
    size_t length = 0;
    uint64_t used_seed = 0;
    status = audioldm_trt_generate(engine.get(), &params, &samples, &waveforms, &length, &used_seed, &error);
    if (status != AUDIOLDM_TRT_OK) return fail(status, error);
    std::unique_ptr<float, decltype(&audioldm_trt_audio_free)> audio(samples, &audioldm_trt_audio_free);

    int rate = audioldm_trt_sampling_rate(engine.get());
    const std::string &output = options["--output"];
    status = audioldm_trt_write_audio(output.c_str(), audio.get(), length, rate, &error);
    if (status != AUDIOLDM_TRT_OK) return fail(status, error);
    std::printf("wrote %s (%.2f s at %d Hz)\n", output.c_str(), static_cast<double>(length) / rate, rate);
    std::printf("seed %llu\n", static_cast<unsigned long long>(used_seed));
    return 0;
}
