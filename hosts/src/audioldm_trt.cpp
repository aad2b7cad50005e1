// The C API of audioldm_trt.h over the Python engine, in an interpreter embedded with pybind11.
//
// One interpreter per process, started on first use and never finalised (extension modules such as ONNX
// Runtime do not survive a restart, and host threads may still be running at exit). The thread that starts it
// releases the GIL at once; every call takes the GIL only while it runs Python, and the engine's graph calls
// release it, so host threads generate concurrently. Every entry point catches everything: a C caller gets a
// status and a one-line message, never an exception or an abort.

#include "audioldm_trt.h"

#include <pybind11/embed.h>
#include <pybind11/numpy.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <unistd.h>
#endif

namespace py = pybind11;

struct audioldm_trt_engine {
    py::object engine;  // an audioldm_trt.engine.Engine; released with the GIL held
    int sampling_rate;
    std::string backend;
    std::atomic<uint64_t> cancels{0};  // audioldm_trt_cancel's count: a generation stops when it changes
};

namespace {

/// A failure with its status, thrown inside the library and turned into a status at the C boundary.
class Failure : public std::runtime_error {
public:
    Failure(audioldm_trt_status code, const std::string &message) : std::runtime_error(message), status(code) {}
    audioldm_trt_status status;
};

/// The Python objects the API calls, imported once with the interpreter. Deliberately never destroyed: the
/// interpreter outlives every static destructor.
struct Python {
    py::object engine_class;
    py::object write_audio_files;
    py::object audio_formats;
    py::object path_class;
    py::object cancelled;
    py::object engine_directory_error;
    py::object backend_unavailable_error;
    py::object non_finite_output_error;
    py::object value_error;
    py::object os_error;
    py::object import_error;
};

std::mutex start_mutex;              // taken only by threads that do not hold the GIL
std::atomic<Python *> python{nullptr};  // set once the interpreter runs and the engine is imported
std::string started_as;              // the python_executable the interpreter was started as
std::string start_failure;           // why the interpreter could not start; repeated to every later call

std::string first_line(const std::string &text) { return text.substr(0, text.find('\n')); }

audioldm_trt_status classify(const Python &objects, const py::handle &value) {
    auto is = [&](const py::object &type) { return PyObject_IsInstance(value.ptr(), type.ptr()) == 1; };
    // Most specific first: EngineDirectoryError is also a ValueError.
    if (is(objects.cancelled)) return AUDIOLDM_TRT_CANCELLED;
    if (is(objects.engine_directory_error)) return AUDIOLDM_TRT_ENGINE_DIRECTORY;
    if (is(objects.backend_unavailable_error)) return AUDIOLDM_TRT_BACKEND_UNAVAILABLE;
    if (is(objects.non_finite_output_error)) return AUDIOLDM_TRT_NON_FINITE_OUTPUT;
    if (is(objects.value_error)) return AUDIOLDM_TRT_INVALID_ARGUMENT;
    if (is(objects.os_error)) return AUDIOLDM_TRT_IO_ERROR;
    if (is(objects.import_error)) return AUDIOLDM_TRT_PYTHON_ERROR;
    return AUDIOLDM_TRT_FAILED;
}

/// The exception as "Type: first line of its message" (the type alone if it has no message): the type says
/// what failed where the message alone would not (a KeyError's message is just the key).
std::string describe(const py::error_already_set &error) {
    std::string type = py::str(error.type().attr("__qualname__"));
    std::string text = py::str(error.value());
    return text.empty() ? type : type + ": " + first_line(text);
}

/// The first two numbers of a version such as "3.11.7" or "0.1.0.dev1", as "3.11".
std::string major_minor(const std::string &version) {
    size_t first = version.find('.');
    return version.substr(0, first == std::string::npos ? first : version.find_first_of(".+-", first + 1));
}

#if defined(__unix__) || defined(__APPLE__)
/// Hosts that load this library with dlopen(RTLD_LOCAL) (C#, Java, Swift and Python FFIs do) keep libpython's
/// symbols out of the global scope, where extension modules such as numpy look for them: put them there.
void expose_libpython_symbols() {
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(&Py_IsInitialized), &info) != 0 && info.dli_fname != nullptr) {
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    }
}

/// bin/python of the prefix this library is installed in: a virtual environment that `cmake --install
/// --prefix VENV` put it into.
std::string python_beside_library() {
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(&audioldm_trt_version), &info) == 0 || info.dli_fname == nullptr) return "";
    auto prefix = std::filesystem::path(info.dli_fname).parent_path() / AUDIOLDM_TRT_LIBDIR_TO_PREFIX;
    return (prefix.lexically_normal() / "bin" / "python").string();
}

bool executable(const std::string &file) { return access(file.c_str(), X_OK) == 0; }
#else
void expose_libpython_symbols() {}
std::string python_beside_library() { return ""; }
bool executable(const std::string &file) { return std::filesystem::exists(file); }
#endif

/// The interpreter to start as: the host's choice (the parameter, or the environment variable it opted into),
/// else the first of the defaults that exists.
std::string choose_python(const audioldm_trt_init_params &params) {
    std::string hint = ": pass a virtual environment's bin/python to audioldm_trt_initialize";
    const char *chosen = params.python_executable;
    if (chosen == nullptr && params.use_environment != 0) chosen = std::getenv("AUDIOLDM_TRT_PYTHON");
    if (chosen != nullptr && *chosen != '\0') {
        if (!executable(chosen)) {
            throw Failure(AUDIOLDM_TRT_PYTHON_ERROR,
                          std::string("python interpreter ") + chosen + " does not exist" + hint);
        }
        return chosen;
    }
    std::string tried;
    for (const std::string &candidate : {python_beside_library(), std::string(AUDIOLDM_TRT_PYTHON)}) {
        if (!candidate.empty() && executable(candidate)) return candidate;
        if (!candidate.empty()) tried += (tried.empty() ? "" : ", ") + candidate;
    }
    throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, "no python interpreter found (tried " + tried + ")" + hint);
}

/// A virtual environment of another Python minor version would start with this library's standard library and
/// miss its own site-packages: name the mismatch instead of "No module named 'audioldm_trt'".
void check_environment_version(const std::string &python_executable) {
    auto bin = std::filesystem::path(python_executable).parent_path();
    for (const auto &config : {bin / "pyvenv.cfg", bin.parent_path() / "pyvenv.cfg"}) {
        std::ifstream file(config);
        for (std::string line; std::getline(file, line);) {
            std::string key = line.substr(0, line.find('='));
            key.erase(key.find_last_not_of(" \t") + 1);
            if (key != "version" && key != "version_info") continue;
            std::string value = line.substr(line.find('=') + 1);
            value.erase(0, value.find_first_not_of(" \t"));
            std::string linked = std::to_string(PY_MAJOR_VERSION) + "." + std::to_string(PY_MINOR_VERSION);
            if (major_minor(value) != linked) {
                throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, "the virtual environment of " + python_executable +
                                                             " is Python " + major_minor(value) +
                                                             ", this library links Python " + linked +
                                                             ": build the library with that environment's python");
            }
            return;
        }
    }
}

[[noreturn]] void fail_to_configure(const PyStatus &status) {
    throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, std::string("cannot configure Python: ") +
                                                 (status.err_msg != nullptr ? status.err_msg : "unknown"));
}

/// An isolated interpreter unless the host opts into the environment: no PYTHON* variables, no user site,
/// the process's locale left as the host set it (UTF-8 mode instead), no signal handlers.
void start_interpreter(const std::string &python_executable, bool use_environment) {
    check_environment_version(python_executable);
    expose_libpython_symbols();
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);  // configure_locale = 0: no setlocale, no LC_CTYPE coercion
    preconfig.utf8_mode = 1;
    preconfig.use_environment = use_environment ? 1 : 0;
    PyStatus status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status) != 0) fail_to_configure(status);
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.isolated = use_environment ? 0 : 1;
    config.use_environment = use_environment ? 1 : 0;
    config.install_signal_handlers = 0;  // signals belong to the host
    // The interpreter finds its prefix from its executable: a virtual environment's bin/python gives it the
    // environment's site-packages (pyvenv.cfg beside it), as running that python would.
    status = PyConfig_SetBytesString(&config, &config.program_name, python_executable.c_str());
    if (PyStatus_Exception(status) != 0) {
        PyConfig_Clear(&config);
        fail_to_configure(status);
    }
    try {
        py::initialize_interpreter(&config, 0, nullptr, false);
    } catch (const std::exception &error) {
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, std::string("cannot start Python as ") + python_executable +
                                                     ": " + first_line(error.what()));
    }
}

/// The engine's objects, imported with the GIL held, once the package is known to be this library's release.
Python *import_engine() {
    std::string executable = py::str(py::module_::import("sys").attr("executable"));
    std::string package;
    try {
        package = py::module_::import("importlib.metadata").attr("version")("audioldm-trt").cast<std::string>();
    } catch (const py::error_already_set &error) {
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR,
                      "the audioldm-trt Python package is not installed in " + executable + ": " + describe(error));
    }
    if (major_minor(package) != major_minor(AUDIOLDM_TRT_VERSION)) {
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, "the audioldm-trt Python package in " + executable + " is " +
                                                     package + ", this library is " AUDIOLDM_TRT_VERSION
                                                     ": install the package and the library of one release");
    }
    try {
        auto engine = py::module_::import("audioldm_trt.engine");
        auto cli = py::module_::import("audioldm_trt.engine.cli");
        auto builtins = py::module_::import("builtins");
        return new Python{engine.attr("Engine"),
                          cli.attr("write_audio_files"),
                          cli.attr("AUDIO_FORMATS"),
                          py::module_::import("pathlib").attr("Path"),
                          engine.attr("Cancelled"),
                          engine.attr("EngineDirectoryError"),
                          engine.attr("BackendUnavailableError"),
                          engine.attr("NonFiniteOutputError"),
                          builtins.attr("ValueError"),
                          builtins.attr("OSError"),
                          builtins.attr("ImportError")};
    } catch (const py::error_already_set &error) {
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR,
                      "cannot import the audioldm_trt engine in Python " + executable + ": " + describe(error));
    }
}

/// Imports the engine into the host's own interpreter, whose GIL this thread holds. No lock: a thread that
/// holds the GIL and waits for a mutex deadlocks with the mutex's holder waiting for the GIL. Two threads may
/// both import (the second finds the modules imported); the first to finish publishes its objects.
Python &adopt_host_interpreter() {
    py::gil_scoped_acquire gil;
    if (python.load() == nullptr) {
        Python *imported = import_engine();
        Python *expected = nullptr;
        if (!python.compare_exchange_strong(expected, imported)) delete imported;
    }
    return *python.load();
}

audioldm_trt_init_params default_init_params() {
    audioldm_trt_init_params params;
    audioldm_trt_init_params_init(&params, sizeof params);
    return params;
}

/// The interpreter with the engine imported, started on first use as `params` say.
Python &start(const audioldm_trt_init_params &params, bool explicit_start) {
    if (Python *ready = python.load(); ready != nullptr && !explicit_start) return *ready;
    if (Py_IsInitialized() != 0 && PyGILState_Check() != 0) return adopt_host_interpreter();
    std::lock_guard<std::mutex> lock(start_mutex);
    if (Python *ready = python.load(); ready != nullptr) {
        if (!started_as.empty() && params.python_executable != nullptr && started_as != params.python_executable) {
            throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT,
                          "Python already runs as " + started_as + ", not " + params.python_executable);
        }
        return *ready;
    }
    if (!start_failure.empty()) throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, start_failure);
    try {
        if (Py_IsInitialized() != 0) return adopt_host_interpreter();  // the host runs Python itself
        std::string executable = choose_python(params);
        start_interpreter(executable, params.use_environment != 0);
        started_as = executable;
        try {
            python.store(import_engine());
        } catch (...) {
            PyEval_SaveThread();
            throw;
        }
        PyEval_SaveThread();  // host threads take the GIL when they call in
    } catch (const Failure &failure) {
        start_failure = failure.what();
        throw;
    }
    return *python.load();
}

/// Runs `body(python)` holding the GIL; a Python exception becomes a Failure with its status.
template <typename Body>
auto with_python(Body &&body) -> decltype(body(std::declval<Python &>())) {
    Python &objects = start(default_init_params(), false);
    py::gil_scoped_acquire gil;
    try {
        return body(objects);
    } catch (const py::error_already_set &error) {
        throw Failure(classify(objects, error.value()), describe(error));
    }
}

/// Runs `body` and turns whatever it throws into a status and a message for the C caller.
template <typename Body>
audioldm_trt_status guarded(char **error, Body &&body) noexcept {
    if (error != nullptr) *error = nullptr;
    audioldm_trt_status status = AUDIOLDM_TRT_FAILED;
    std::string message;
    try {
        body();
        return AUDIOLDM_TRT_OK;
    } catch (const Failure &failure) {
        status = failure.status;
        message = failure.what();
    } catch (const std::bad_alloc &) {
        message = "out of memory";
    } catch (const std::exception &unexpected) {
        message = first_line(unexpected.what());
    } catch (...) {
        message = "unknown error";
    }
    if (error != nullptr) *error = strdup(message.c_str());  // NULL if even that fails: the status still says
    return status;
}

void require(bool condition, const char *message) {
    if (!condition) throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT, message);
}

// The compatibility rule needs structs without tail padding: an older struct_size must end at a field's end.
static_assert(sizeof(audioldm_trt_init_params) ==
              offsetof(audioldm_trt_init_params, use_environment) + sizeof(int64_t));
static_assert(sizeof(audioldm_trt_load_params) == offsetof(audioldm_trt_load_params, threads) + sizeof(int64_t));
static_assert(sizeof(audioldm_trt_generate_params) ==
              offsetof(audioldm_trt_generate_params, user_data) + sizeof(void *));

/// Fills the caller's `struct_size` bytes of `params` with `defaults`.
template <typename Params>
void init_params(Params *params, size_t struct_size, const Params &defaults) {
    if (params == nullptr || struct_size < sizeof(size_t)) return;
    std::memcpy(params, &defaults, std::min(struct_size, sizeof(Params)));
    params->struct_size = struct_size;
}

/// The caller's struct as this library knows it: fields past its struct_size at their defaults; fields past
/// this library's must be zero (a newer host asking for what this library cannot do).
template <typename Params>
Params read_params(const Params *given, void (*init)(Params *, size_t), const char *name) {
    Params params;
    init(&params, sizeof params);
    if (given == nullptr) return params;
    size_t size = given->struct_size;
    if (size < sizeof(size_t) || size > 4096) {
        throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT, std::string(name) + ".struct_size is " + std::to_string(size) +
                                                         ": fill the struct with " + name + "_init");
    }
    const auto *bytes = reinterpret_cast<const unsigned char *>(given);
    if (size > sizeof(Params) && std::any_of(bytes + sizeof(Params), bytes + size, [](auto b) { return b != 0; })) {
        throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT, std::string(name) + " sets fields this library (" +
                                                         AUDIOLDM_TRT_VERSION + ") does not have");
    }
    std::memcpy(&params, given, std::min(size, sizeof(Params)));
    return params;
}

/// UTF-8 text from the host as a Python str; text that is not UTF-8 is a bad argument named `what`.
py::str text(const char *value, const char *what) {
    PyObject *decoded = PyUnicode_DecodeUTF8(value, static_cast<Py_ssize_t>(std::strlen(value)), "strict");
    if (decoded == nullptr) {
        PyErr_Clear();
        throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT, std::string(what) + " is not valid UTF-8");
    }
    return py::reinterpret_steal<py::str>(decoded);
}

/// Optional UTF-8 text: None for NULL.
py::object optional_text(const char *value, const char *what) {
    return value != nullptr ? py::object(text(value, what)) : py::none();
}

/// A file system path from the host (bytes in the file system's encoding) as a pathlib.Path.
py::object path(const Python &objects, const char *value) {
    PyObject *decoded = PyUnicode_DecodeFSDefault(value);
    if (decoded == nullptr) throw py::error_already_set();
    return objects.path_class(py::reinterpret_steal<py::str>(decoded));
}

/// Engine.run's on_step for a C caller: raises Cancelled once audioldm_trt_cancel has been called since
/// `cancels`, or once the progress callback (called without the GIL) returns nonzero.
py::cpp_function on_step(const Python &objects, audioldm_trt_engine *engine, uint64_t cancels,
                         const audioldm_trt_generate_params &params) {
    return py::cpp_function([&objects, engine, cancels, progress = params.progress,
                             user_data = params.user_data](int step, int steps) {
        auto stop = [&](const char *who) {
            std::string message = std::string(who) + " stopped the generation after UNet call " +
                                  std::to_string(step + 1) + " of " + std::to_string(steps);
            PyErr_SetString(objects.cancelled.ptr(), message.c_str());
            throw py::error_already_set();
        };
        if (engine->cancels.load() != cancels) stop("audioldm_trt_cancel");
        if (progress != nullptr) {
            int result = 0;
            {
                py::gil_scoped_release unlocked;
                result = progress(user_data, step + 1, steps);
            }
            if (result != 0) stop("the progress callback");
        }
        if (engine->cancels.load() != cancels) stop("audioldm_trt_cancel");
    });
}

}  // namespace

extern "C" {

const char *audioldm_trt_version(void) { return AUDIOLDM_TRT_VERSION; }

int audioldm_trt_version_number(void) { return AUDIOLDM_TRT_VERSION_NUMBER; }

void audioldm_trt_init_params_init(audioldm_trt_init_params *params, size_t struct_size) {
    init_params(params, struct_size, audioldm_trt_init_params{});
}

void audioldm_trt_load_params_init(audioldm_trt_load_params *params, size_t struct_size) {
    init_params(params, struct_size, audioldm_trt_load_params{});
}

void audioldm_trt_generate_params_init(audioldm_trt_generate_params *params, size_t struct_size) {
    audioldm_trt_generate_params defaults{};
    defaults.steps = 10;
    defaults.guidance = 2.5;
    defaults.waveforms = 1;
    init_params(params, struct_size, defaults);
}

audioldm_trt_status audioldm_trt_initialize(const audioldm_trt_init_params *params, char **error) {
    return guarded(error, [&] {
        start(read_params(params, audioldm_trt_init_params_init, "audioldm_trt_init_params"), true);
    });
}

audioldm_trt_status audioldm_trt_engine_load(const char *directory, const audioldm_trt_load_params *params,
                                             audioldm_trt_engine **engine, char **error) {
    if (engine != nullptr) *engine = nullptr;
    return guarded(error, [&] {
        require(engine != nullptr, "engine is NULL");
        require(directory != nullptr, "directory is NULL");
        auto options = read_params(params, audioldm_trt_load_params_init, "audioldm_trt_load_params");
        require(options.threads >= 0, "threads must be 0 (one per core) or positive");
        *engine = with_python([&](Python &objects) {
            py::object loaded = objects.engine_class.attr("load")(
                path(objects, directory),
                py::arg("backend") = options.backend != nullptr ? text(options.backend, "backend") : py::str("auto"),
                py::arg("scheduler") = optional_text(options.scheduler, "scheduler"),
                py::arg("threads") = options.threads > 0 ? py::object(py::int_(options.threads)) : py::none(),
                py::arg("precision") = optional_text(options.precision, "precision"));
            return new audioldm_trt_engine{loaded, loaded.attr("sampling_rate").cast<int>(),
                                           loaded.attr("backend").attr("describe")().cast<std::string>()};
        });
    });
}

void audioldm_trt_engine_free(audioldm_trt_engine *engine) {
    if (engine == nullptr) return;
    guarded(nullptr, [&] {
        with_python([&](Python &) {
            std::unique_ptr<audioldm_trt_engine> owned(engine);
            owned->engine.attr("close")();  // the GPU memory now, whoever else holds the Python object
        });
    });
}

int audioldm_trt_sampling_rate(const audioldm_trt_engine *engine) {
    return engine != nullptr ? engine->sampling_rate : 0;
}

const char *audioldm_trt_engine_backend(const audioldm_trt_engine *engine) {
    return engine != nullptr ? engine->backend.c_str() : "";
}

void audioldm_trt_cancel(audioldm_trt_engine *engine) {
    if (engine != nullptr) engine->cancels.fetch_add(1);
}

audioldm_trt_status audioldm_trt_generate(audioldm_trt_engine *engine, const audioldm_trt_generate_params *params,
                                          float **audio, size_t *waveforms, size_t *samples, uint64_t *seed,
                                          char **error) {
    if (audio != nullptr) *audio = nullptr;
    if (waveforms != nullptr) *waveforms = 0;
    if (samples != nullptr) *samples = 0;
    uint64_t cancels = engine != nullptr ? engine->cancels.load() : 0;  // cancels from here on stop this call
    return guarded(error, [&] {
        require(engine != nullptr, "engine is NULL");
        require(params != nullptr, "params is NULL");
        require(audio != nullptr && waveforms != nullptr && samples != nullptr, "audio, waveforms or samples is NULL");
        auto request = read_params(params, audioldm_trt_generate_params_init, "audioldm_trt_generate_params");
        require(request.prompt != nullptr, "prompt is NULL");
        with_python([&](Python &objects) {
            py::object result = engine->engine.attr("run")(
                text(request.prompt, "prompt"),
                py::arg("audio_length_in_s") =
                    request.duration_s == 0 ? py::object(py::none()) : py::object(py::float_(request.duration_s)),
                py::arg("num_inference_steps") = request.steps, py::arg("guidance_scale") = request.guidance,
                py::arg("negative_prompt") = optional_text(request.negative_prompt, "negative_prompt"),
                py::arg("num_waveforms_per_prompt") = request.waveforms, py::arg("eta") = request.eta,
                py::arg("seed") = request.seeded != 0 ? py::object(py::int_(request.seed)) : py::none(),
                py::arg("on_step") = on_step(objects, engine, cancels, request));
            auto array = result.attr("audio").cast<py::array_t<float, py::array::c_style | py::array::forcecast>>();
            auto rows = static_cast<size_t>(array.shape(0));
            auto columns = static_cast<size_t>(array.shape(1));
            auto *copy = static_cast<float *>(std::malloc(std::max<size_t>(rows * columns, 1) * sizeof(float)));
            if (copy == nullptr) throw std::bad_alloc();
            {
                py::gil_scoped_release unlocked;  // the array stays referenced; other threads may run Python
                std::memcpy(copy, array.data(), rows * columns * sizeof(float));
            }
            *audio = copy;
            *waveforms = rows;
            *samples = columns;
            if (seed != nullptr) *seed = result.attr("seed").cast<uint64_t>();
        });
    });
}

audioldm_trt_status audioldm_trt_write_audio(const char *path_name, const float *audio, size_t samples,
                                             int sampling_rate, char **error) {
    return guarded(error, [&] {
        require(path_name != nullptr, "path is NULL");
        require(audio != nullptr || samples == 0, "audio is NULL");
        require(sampling_rate > 0, "sampling_rate must be positive");
        with_python([&](Python &objects) {
            py::object target = path(objects, path_name);
            py::object suffix = target.attr("suffix").attr("lower")();
            if (!objects.audio_formats.contains(suffix)) {
                auto formats = py::str(" or ").attr("join")(objects.audio_formats).cast<std::string>();
                throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT, "path must end in " + formats + ", got " + path_name);
            }
            if (!target.attr("parent").attr("is_dir")().cast<bool>()) {
                throw Failure(AUDIOLDM_TRT_IO_ERROR, std::string("cannot write ") + path_name +
                                                         ": its directory does not exist");
            }
            // A view of the caller's samples, not a copy: the call does not keep it.
            py::array_t<float> waveforms({py::ssize_t{1}, static_cast<py::ssize_t>(samples)}, audio, py::none());
            objects.write_audio_files(py::make_tuple(target), waveforms, sampling_rate);
        });
    });
}

void audioldm_trt_audio_free(float *audio) { std::free(audio); }

void audioldm_trt_string_free(char *message) { std::free(message); }

}  // extern "C"
