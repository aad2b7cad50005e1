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
#include <cstdlib>
#include <cstring>
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
    py::object engine_directory_error;
    py::object backend_unavailable_error;
    py::object non_finite_output_error;
    py::object value_error;
    py::object os_error;
    py::object import_error;
};

std::mutex start_mutex;
Python *python = nullptr;        // set once the interpreter runs and the engine is imported
std::string started_as;          // the python_executable the interpreter was started as
std::string start_failure;       // why the interpreter could not start; repeated to every later call

std::string first_line(const std::string &text) { return text.substr(0, text.find('\n')); }

audioldm_trt_status classify(const Python &py_objects, const py::handle &value) {
    auto is = [&](const py::object &type) { return PyObject_IsInstance(value.ptr(), type.ptr()) == 1; };
    // Most specific first: EngineDirectoryError is also a ValueError.
    if (is(py_objects.engine_directory_error)) return AUDIOLDM_TRT_ENGINE_DIRECTORY;
    if (is(py_objects.backend_unavailable_error)) return AUDIOLDM_TRT_BACKEND_UNAVAILABLE;
    if (is(py_objects.non_finite_output_error)) return AUDIOLDM_TRT_NON_FINITE_OUTPUT;
    if (is(py_objects.value_error)) return AUDIOLDM_TRT_INVALID_ARGUMENT;
    if (is(py_objects.os_error)) return AUDIOLDM_TRT_IO_ERROR;
    if (is(py_objects.import_error)) return AUDIOLDM_TRT_PYTHON_ERROR;
    return AUDIOLDM_TRT_FAILED;
}

/// The exception's message as the command line prints it: its first line, or its type's name if it has none.
std::string describe(const py::error_already_set &error) {
    std::string text = py::str(error.value());
    if (text.empty()) return py::str(error.type().attr("__name__"));
    return first_line(text);
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
#else
void expose_libpython_symbols() {}
#endif

void start_interpreter(const std::string &python_executable) {
#if defined(__unix__) || defined(__APPLE__)
    if (access(python_executable.c_str(), X_OK) != 0) {
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, "python interpreter " + python_executable +
                                                     " does not exist: pass a virtual environment's bin/python "
                                                     "to audioldm_trt_initialize");
    }
#endif
    expose_libpython_symbols();
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;  // signals belong to the host
    config.parse_argv = 0;
    // The interpreter finds its prefix from its executable: a virtual environment's bin/python gives it the
    // environment's site-packages (pyvenv.cfg beside it), as running that python would.
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python_executable.c_str());
    if (PyStatus_Exception(status) != 0) {
        PyConfig_Clear(&config);
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, std::string("cannot configure Python: ") +
                                                     (status.err_msg != nullptr ? status.err_msg : "unknown"));
    }
    try {
        py::initialize_interpreter(&config, 0, nullptr, false);
    } catch (const std::exception &error) {
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, std::string("cannot start Python as ") + python_executable +
                                                     ": " + first_line(error.what()));
    }
}

Python *import_engine() {
    try {
        auto engine = py::module_::import("audioldm_trt.engine");
        auto cli = py::module_::import("audioldm_trt.engine.cli");
        auto builtins = py::module_::import("builtins");
        return new Python{engine.attr("Engine"),
                          cli.attr("write_audio_files"),
                          cli.attr("AUDIO_FORMATS"),
                          py::module_::import("pathlib").attr("Path"),
                          engine.attr("EngineDirectoryError"),
                          engine.attr("BackendUnavailableError"),
                          engine.attr("NonFiniteOutputError"),
                          builtins.attr("ValueError"),
                          builtins.attr("OSError"),
                          builtins.attr("ImportError")};
    } catch (const py::error_already_set &error) {
        std::string executable = py::str(py::module_::import("sys").attr("executable"));
        throw Failure(AUDIOLDM_TRT_PYTHON_ERROR,
                      "cannot import the audioldm_trt engine in Python " + executable + ": " + describe(error));
    }
}

/// The interpreter with the engine imported, started on first use as `python_executable` (or as the one this
/// library was built against).
Python &start(const char *python_executable) {
    std::lock_guard<std::mutex> lock(start_mutex);
    std::string wanted = python_executable != nullptr ? python_executable : AUDIOLDM_TRT_PYTHON;
    if (python != nullptr) {
        if (python_executable != nullptr && !started_as.empty() && wanted != started_as) {
            throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT, "Python already runs as " + started_as + ", not " + wanted);
        }
        return *python;
    }
    if (!start_failure.empty()) throw Failure(AUDIOLDM_TRT_PYTHON_ERROR, start_failure);
    try {
        if (Py_IsInitialized() != 0) {  // the host runs Python itself: use its interpreter
            py::gil_scoped_acquire gil;
            python = import_engine();
        } else {
            start_interpreter(wanted);
            started_as = wanted;
            try {
                python = import_engine();
            } catch (...) {
                PyEval_SaveThread();
                throw;
            }
            PyEval_SaveThread();  // host threads take the GIL when they call in
        }
    } catch (const Failure &failure) {
        start_failure = failure.what();
        throw;
    }
    return *python;
}

/// Runs `body(python)` holding the GIL; a Python exception becomes a Failure with its status.
template <typename Body>
auto with_python(Body &&body) -> decltype(body(std::declval<Python &>())) {
    Python &objects = start(nullptr);
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

/// UTF-8 text from the host as a Python str; text that is not UTF-8 is a bad argument named `what`.
py::str text(const char *value, const char *what) {
    PyObject *decoded = PyUnicode_DecodeUTF8(value, static_cast<Py_ssize_t>(std::strlen(value)), "strict");
    if (decoded == nullptr) {
        PyErr_Clear();
        throw Failure(AUDIOLDM_TRT_INVALID_ARGUMENT, std::string(what) + " is not valid UTF-8");
    }
    return py::reinterpret_steal<py::str>(decoded);
}

/// A file system path from the host (bytes in the file system's encoding) as a pathlib.Path.
py::object path(const Python &objects, const char *value) {
    PyObject *decoded = PyUnicode_DecodeFSDefault(value);
    if (decoded == nullptr) throw py::error_already_set();
    return objects.path_class(py::reinterpret_steal<py::str>(decoded));
}

}  // namespace

extern "C" {

const char *audioldm_trt_version(void) { return AUDIOLDM_TRT_VERSION; }

audioldm_trt_status audioldm_trt_initialize(const char *python_executable, char **error) {
    return guarded(error, [&] {
        require(python_executable != nullptr, "python_executable is NULL");
        start(python_executable);
    });
}

audioldm_trt_status audioldm_trt_engine_load(const char *directory, const char *backend, const char *scheduler,
                                             int threads, audioldm_trt_engine **engine, char **error) {
    if (engine != nullptr) *engine = nullptr;
    return guarded(error, [&] {
        require(engine != nullptr, "engine is NULL");
        require(directory != nullptr, "directory is NULL");
        require(threads >= 0, "threads must be 0 (one per core) or positive");
        *engine = with_python([&](Python &objects) {
            py::object loaded = objects.engine_class.attr("load")(
                path(objects, directory), py::arg("backend") = backend != nullptr ? text(backend, "backend")
                                                                                   : py::str("auto"),
                py::arg("scheduler") = scheduler != nullptr ? py::object(text(scheduler, "scheduler")) : py::none(),
                py::arg("threads") = threads > 0 ? py::object(py::int_(threads)) : py::none());
            return new audioldm_trt_engine{loaded, loaded.attr("sampling_rate").cast<int>(),
                                           loaded.attr("backend").attr("describe")().cast<std::string>()};
        });
    });
}

void audioldm_trt_engine_free(audioldm_trt_engine *engine) {
    if (engine == nullptr) return;
    guarded(nullptr, [&] { with_python([&](Python &) { delete engine; }); });
}

int audioldm_trt_sampling_rate(const audioldm_trt_engine *engine) {
    return engine != nullptr ? engine->sampling_rate : 0;
}

const char *audioldm_trt_engine_backend(const audioldm_trt_engine *engine) {
    return engine != nullptr ? engine->backend.c_str() : "";
}

void audioldm_trt_generate_params_init(audioldm_trt_generate_params *params) {
    if (params == nullptr) return;
    *params = audioldm_trt_generate_params{};
    params->steps = 10;
    params->guidance = 2.5;
    params->waveforms = 1;
}

audioldm_trt_status audioldm_trt_generate(audioldm_trt_engine *engine, const audioldm_trt_generate_params *params,
                                          float **audio, size_t *waveforms, size_t *samples, uint64_t *seed,
                                          char **error) {
    if (audio != nullptr) *audio = nullptr;
    if (waveforms != nullptr) *waveforms = 0;
    if (samples != nullptr) *samples = 0;
    return guarded(error, [&] {
        require(engine != nullptr, "engine is NULL");
        require(params != nullptr, "params is NULL");
        require(audio != nullptr && waveforms != nullptr && samples != nullptr, "audio, waveforms or samples is NULL");
        require(params->prompt != nullptr, "prompt is NULL");
        with_python([&](Python &) {
            py::object result = engine->engine.attr("run")(
                text(params->prompt, "prompt"),
                py::arg("audio_length_in_s") =
                    params->duration_s == 0 ? py::object(py::none()) : py::object(py::float_(params->duration_s)),
                py::arg("num_inference_steps") = params->steps, py::arg("guidance_scale") = params->guidance,
                py::arg("negative_prompt") = params->negative_prompt != nullptr
                                                 ? py::object(text(params->negative_prompt, "negative_prompt"))
                                                 : py::none(),
                py::arg("num_waveforms_per_prompt") = params->waveforms, py::arg("eta") = params->eta,
                py::arg("seed") = params->seeded != 0 ? py::object(py::int_(params->seed)) : py::none());
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
