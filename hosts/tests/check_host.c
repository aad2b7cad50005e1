/* A C host that tests/test_host.py runs: the C API from plain C, from several threads, and its errors.
 *
 *   check-host threads ENGINE OUTDIR THREADS   four requests from four threads at once, then one after another;
 *                                              exits 1 unless both give the same audio; writes OUTDIR/N.f32
 *   check-host errors ENGINE EMPTY_DIR         bad calls, one line each: NAME<TAB>STATUS<TAB>MESSAGE
 *   check-host python EXECUTABLE|- USE_ENV     the interpreter started as EXECUTABLE (- for the default), then
 *                                              a load
 *   check-host progress ENGINE                 the progress callback's calls, then a cancel from it
 *   check-host cancel ENGINE                   audioldm_trt_cancel from another thread during a long generation
 *   check-host overlap ENGINE                  two threads meet in their progress callbacks, each waiting for the
 *                                              other: only calls that overlap in time get there
 *   check-host seed ENGINE OUTDIR              an unseeded call: the seed it reports, its audio in OUTDIR/seed.f32
 *   check-host structs ENGINE                  struct_size: an older (smaller) struct, a newer (larger) one
 *   check-host isolation ENGINE OUTDIR         a generation; the locale and LC_CTYPE before and after
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers, nanosleep */
#include "audioldm_trt.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REQUESTS 4

typedef struct request {
    audioldm_trt_engine *engine;
    audioldm_trt_generate_params params;
    pthread_barrier_t *start;
    float *audio;
    size_t waveforms, samples;
    audioldm_trt_status status;
    char *error;
} request;

/* The requests of test_host.py's THREAD_REQUESTS, in the same order. */
static void fill_request(int index, audioldm_trt_generate_params *params) {
    audioldm_trt_generate_params_init(params, sizeof *params);
    params->seeded = 1;
    params->steps = 3;
    switch (index) {
        case 0:
            params->prompt = "a dog barking";
            params->seed = 1;
            break;
        case 1:
            params->prompt = "rain on a roof";
            params->negative_prompt = "wind";
            params->seed = 2;
            params->duration_s = 0.9;
            break;
        case 2:
            params->prompt = "a bell";
            params->guidance = 1.0;
            params->waveforms = 2;
            params->seed = 3;
            break;
        default:
            params->prompt = "birds";
            params->eta = 0.5;
            params->steps = 4;
            params->seed = UINT64_MAX; /* torch's manual_seed(-1) */
            break;
    }
}

static void *generate(void *argument) {
    request *r = argument;
    if (r->start != NULL) pthread_barrier_wait(r->start);
    r->status = audioldm_trt_generate(r->engine, &r->params, &r->audio, &r->waveforms, &r->samples, NULL, &r->error);
    return NULL;
}

static int write_floats(const char *directory, int index, const request *r) {
    char name[4096];
    snprintf(name, sizeof name, "%s/%d.f32", directory, index);
    FILE *file = fopen(name, "wb");
    if (file == NULL) return 0;
    size_t count = r->waveforms * r->samples;
    int written = fwrite(r->audio, sizeof(float), count, file) == count;
    return fclose(file) == 0 && written;
}

/* The engine on ONNX Runtime CPU, or NULL after saying why. */
static audioldm_trt_engine *load(const char *directory, int ort_threads) {
    audioldm_trt_load_params params;
    audioldm_trt_load_params_init(&params, sizeof params);
    params.backend = "onnxruntime-cpu";
    params.threads = ort_threads;
    audioldm_trt_engine *engine = NULL;
    char *error = NULL;
    if (audioldm_trt_engine_load(directory, &params, &engine, &error) != AUDIOLDM_TRT_OK) {
        fprintf(stderr, "load: %s\n", error);
        audioldm_trt_string_free(error);
    }
    return engine;
}

static double seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + now.tv_nsec * 1e-9;
}

static void pause_ms(int ms) {
    struct timespec wait = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&wait, NULL);
}

static int threads(const char *directory, const char *output, int ort_threads) {
    audioldm_trt_engine *engine = load(directory, ort_threads);
    if (engine == NULL) return 1;
    request concurrent[REQUESTS], sequential[REQUESTS];
    pthread_t thread[REQUESTS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, REQUESTS);
    for (int i = 0; i < REQUESTS; ++i) {
        concurrent[i] = (request){.engine = engine, .start = &start};
        fill_request(i, &concurrent[i].params);
        sequential[i] = (request){.engine = engine};
        fill_request(i, &sequential[i].params);
        pthread_create(&thread[i], NULL, generate, &concurrent[i]);
    }
    for (int i = 0; i < REQUESTS; ++i) pthread_join(thread[i], NULL);
    for (int i = 0; i < REQUESTS; ++i) generate(&sequential[i]);
    int failures = 0;
    for (int i = 0; i < REQUESTS; ++i) {
        const request *a = &concurrent[i], *b = &sequential[i];
        if (a->status != AUDIOLDM_TRT_OK || b->status != AUDIOLDM_TRT_OK) {
            fprintf(stderr, "request %d: %s\n", i, a->error != NULL ? a->error : b->error);
            ++failures;
        } else if (a->waveforms != b->waveforms || a->samples != b->samples ||
                   memcmp(a->audio, b->audio, a->waveforms * a->samples * sizeof(float)) != 0) {
            fprintf(stderr, "request %d: concurrent and sequential audio differ\n", i);
            ++failures;
        } else if (!write_floats(output, i, a)) {
            fprintf(stderr, "request %d: cannot write to %s\n", i, output);
            ++failures;
        } else {
            printf("request %d: %zu x %zu samples, equal\n", i, a->waveforms, a->samples);
        }
        audioldm_trt_audio_free(a->audio);
        audioldm_trt_audio_free(b->audio);
        audioldm_trt_string_free(a->error);
        audioldm_trt_string_free(b->error);
    }
    pthread_barrier_destroy(&start);
    audioldm_trt_engine_free(engine);
    return failures == 0 ? 0 : 1;
}

static void report(const char *name, audioldm_trt_status status, char *error) {
    printf("%s\t%d\t%s\n", name, (int)status, error != NULL ? error : "");
    audioldm_trt_string_free(error);
}

/* A generation that must fail, and leave the outputs empty. */
static void bad_generation(const char *name, audioldm_trt_engine *engine, audioldm_trt_generate_params params) {
    float *audio = (float *)&params; /* any non-NULL value: a failure must reset it */
    size_t waveforms = 1, samples = 1;
    char *error = NULL;
    audioldm_trt_status status = audioldm_trt_generate(engine, &params, &audio, &waveforms, &samples, NULL, &error);
    if (audio != NULL || waveforms != 0 || samples != 0) printf("%s\toutputs not reset\n", name);
    report(name, status, error);
}

static audioldm_trt_status load_with(const char *directory, const char *backend, const char *scheduler,
                                     const char *precision, int64_t threads, audioldm_trt_engine **engine,
                                     char **error) {
    audioldm_trt_load_params params;
    audioldm_trt_load_params_init(&params, sizeof params);
    params.backend = backend;
    params.scheduler = scheduler;
    params.precision = precision;
    params.threads = threads;
    return audioldm_trt_engine_load(directory, &params, engine, error);
}

static int errors(const char *directory, const char *empty_directory) {
    audioldm_trt_engine *engine = NULL;
    char *error = NULL;
    audioldm_trt_status status;

    status = load_with("/nonexistent/engine", NULL, NULL, NULL, 0, &engine, &error);
    report("load_missing_directory", status, error);
    status = load_with(empty_directory, NULL, NULL, NULL, 0, &engine, &error);
    report("load_incomplete_directory", status, error);
    status = load_with(directory, "no-such-backend", NULL, NULL, 0, &engine, &error);
    report("load_unknown_backend", status, error);
    status = load_with(directory, "tensorrt", NULL, NULL, 0, &engine, &error);
    report("load_backend_unavailable", status, error);
    status = load_with(directory, NULL, "NoSuchScheduler", NULL, 0, &engine, &error);
    report("load_unknown_scheduler", status, error);
    status = load_with(directory, "onnxruntime-cpu", NULL, "fp8", 0, &engine, &error);
    report("load_unknown_precision", status, error);
    status = load_with(directory, NULL, NULL, NULL, -1, &engine, &error);
    report("load_negative_threads", status, error);
    status = load_with(NULL, NULL, NULL, NULL, 0, &engine, &error);
    report("load_null_directory", status, error);
    if (engine != NULL) printf("engine not reset\n");

    status = load_with(directory, "onnxruntime-cpu", NULL, NULL, 1, &engine, &error);
    report("load", status, error);
    if (status != AUDIOLDM_TRT_OK) return 1;

    audioldm_trt_generate_params valid, params;
    audioldm_trt_generate_params_init(&valid, sizeof valid);
    valid.prompt = "a dog barking";
    valid.steps = 2;
    valid.seeded = 1;

    params = valid, params.steps = 0;
    bad_generation("steps_zero", engine, params);
    params = valid, params.duration_s = -1.0;
    bad_generation("duration_negative", engine, params);
    params = valid, params.guidance = NAN;
    bad_generation("guidance_nan", engine, params);
    params = valid, params.waveforms = -2;
    bad_generation("waveforms_negative", engine, params);
    params = valid, params.eta = -0.5;
    bad_generation("eta_negative", engine, params);
    params = valid, params.prompt = NULL;
    bad_generation("prompt_null", engine, params);
    params = valid, params.prompt = "caf\xe9"; /* Latin-1, not UTF-8 */
    bad_generation("prompt_not_utf8", engine, params);
    bad_generation("engine_null", NULL, valid);
    params = valid, params.guidance = 1e38; /* finite, but the guided noise overflows float32 */
    bad_generation("guidance_overflows", engine, params);
    params = valid, params.struct_size = 0;
    bad_generation("struct_size_zero", engine, params);

    float silence[16] = {0};
    status = audioldm_trt_write_audio("out.mp3", silence, 16, 16000, &error);
    report("write_unknown_format", status, error);
    status = audioldm_trt_write_audio("/nonexistent/out.wav", silence, 16, 16000, &error);
    report("write_missing_directory", status, error);
    char flac[4096];
    snprintf(flac, sizeof flac, "%s/out.flac", empty_directory);
    status = audioldm_trt_write_audio(flac, silence, 16, 1000000, &error); /* beyond FLAC's rates */
    report("write_flac_rate", status, error);
    audioldm_trt_init_params init;
    audioldm_trt_init_params_init(&init, sizeof init);
    init.python_executable = "/usr/bin/another-python";
    status = audioldm_trt_initialize(&init, &error);
    report("initialize_again", status, error);

    /* The engine still works after all that. */
    float *audio = NULL;
    size_t waveforms = 0, samples = 0;
    status = audioldm_trt_generate(engine, &valid, &audio, &waveforms, &samples, NULL, &error);
    report("generate_after_errors", status, error);
    audioldm_trt_audio_free(audio);
    audioldm_trt_engine_free(engine);
    return 0;
}

static int python(const char *executable, int use_environment) {
    char *error = NULL;
    audioldm_trt_engine *engine = NULL;
    audioldm_trt_init_params params;
    audioldm_trt_init_params_init(&params, sizeof params);
    params.python_executable = strcmp(executable, "-") == 0 ? NULL : executable;
    params.use_environment = use_environment;
    audioldm_trt_status status = audioldm_trt_initialize(&params, &error);
    report("initialize", status, error);
    status = audioldm_trt_engine_load("/nonexistent/engine", NULL, &engine, &error);
    report("load", status, error);
    return 0;
}

/* What a progress callback saw: its calls, and after how many it asks to stop (0: never). */
typedef struct progress_log {
    int done[64], total[64], calls, stop_after;
} progress_log;

static int log_progress(void *user_data, int done, int total) {
    progress_log *log = user_data;
    if (log->calls < 64) log->done[log->calls] = done, log->total[log->calls] = total;
    ++log->calls;
    return log->stop_after != 0 && log->calls >= log->stop_after;
}

/* A generation of `steps` steps with `log` as its progress callback's data; prints NAME<TAB>STATUS<TAB>MESSAGE,
 * then each call of the callback as "NAME<TAB>DONE/TOTAL". */
static void logged_generation(const char *name, audioldm_trt_engine *engine, int steps, progress_log *log) {
    audioldm_trt_generate_params params;
    audioldm_trt_generate_params_init(&params, sizeof params);
    params.prompt = "a dog barking";
    params.steps = steps;
    params.progress = log_progress;
    params.user_data = log;
    float *audio = NULL;
    size_t waveforms = 0, samples = 0;
    char *error = NULL;
    audioldm_trt_status status = audioldm_trt_generate(engine, &params, &audio, &waveforms, &samples, NULL, &error);
    report(name, status, error);
    for (int i = 0; i < log->calls && i < 64; ++i) printf("%s\t%d/%d\n", name, log->done[i], log->total[i]);
    if ((status == AUDIOLDM_TRT_OK) != (audio != NULL)) printf("%s\taudio does not match the status\n", name);
    audioldm_trt_audio_free(audio);
}

static int progress(const char *directory) {
    audioldm_trt_engine *engine = load(directory, 1);
    if (engine == NULL) return 1;
    progress_log full = {.stop_after = 0}, stopped = {.stop_after = 2};
    logged_generation("full", engine, 4, &full);
    logged_generation("stopped", engine, 10, &stopped);
    audioldm_trt_engine_free(engine);
    return 0;
}

/* A long generation on another thread, counting its UNet calls. */
typedef struct long_generation {
    audioldm_trt_engine *engine;
    atomic_int calls, finished;
    audioldm_trt_status status;
    char *error;
    double returned;
} long_generation;

static int count_call(void *user_data, int done, int total) {
    (void)done, (void)total;
    atomic_fetch_add(&((long_generation *)user_data)->calls, 1);
    return 0;
}

static void *run_long_generation(void *argument) {
    long_generation *g = argument;
    audioldm_trt_generate_params params;
    audioldm_trt_generate_params_init(&params, sizeof params);
    params.prompt = "rain";
    params.steps = 500; /* some seconds on the test model */
    params.progress = count_call;
    params.user_data = g;
    float *audio = NULL;
    size_t waveforms = 0, samples = 0;
    g->status = audioldm_trt_generate(g->engine, &params, &audio, &waveforms, &samples, NULL, &g->error);
    g->returned = seconds();
    atomic_store(&g->finished, 1);
    audioldm_trt_audio_free(audio);
    return NULL;
}

static int cancel(const char *directory) {
    audioldm_trt_engine *engine = load(directory, 1);
    if (engine == NULL) return 1;
    long_generation g = {.engine = engine};
    pthread_t thread;
    pthread_create(&thread, NULL, run_long_generation, &g);
    while (atomic_load(&g.calls) < 3 && !atomic_load(&g.finished)) pause_ms(1);
    int calls_at_cancel = atomic_load(&g.calls);
    double cancelled = seconds();
    audioldm_trt_cancel(engine);
    pthread_join(thread, NULL);
    report("cancelled", g.status, g.error);
    printf("calls_after_cancel\t%d\n", atomic_load(&g.calls) - calls_at_cancel);
    printf("milliseconds_to_return\t%.1f\n", (g.returned - cancelled) * 1e3);
    progress_log later = {.stop_after = 0};
    logged_generation("later", engine, 2, &later); /* a cancel affects the calls running, not later ones */
    audioldm_trt_engine_free(engine);
    return 0;
}

/* Two generations that each wait, in their first progress callback, until the other has made its first UNet
 * call: calls serialised by a lock would keep the second waiting until the first gave up. */
typedef struct meeting {
    audioldm_trt_engine *engine;
    atomic_int arrived;
    int met[2];
    audioldm_trt_status status[2];
} meeting;

typedef struct participant {
    meeting *meeting;
    int index;
} participant;

static int meet(void *user_data, int done, int total) {
    (void)total;
    participant *p = user_data;
    if (done != 1) return 0;
    atomic_fetch_add(&p->meeting->arrived, 1);
    double deadline = seconds() + 30;
    while (atomic_load(&p->meeting->arrived) < 2 && seconds() < deadline) pause_ms(1);
    p->meeting->met[p->index] = atomic_load(&p->meeting->arrived) == 2;
    return 0;
}

static void *generate_meeting(void *argument) {
    participant *p = argument;
    audioldm_trt_generate_params params;
    audioldm_trt_generate_params_init(&params, sizeof params);
    params.prompt = p->index == 0 ? "a bell" : "birds";
    params.steps = 3;
    params.progress = meet;
    params.user_data = p;
    float *audio = NULL;
    size_t waveforms = 0, samples = 0;
    p->meeting->status[p->index] =
        audioldm_trt_generate(p->meeting->engine, &params, &audio, &waveforms, &samples, NULL, NULL);
    audioldm_trt_audio_free(audio);
    return NULL;
}

static int overlap(const char *directory) {
    meeting m = {.engine = load(directory, 1)};
    if (m.engine == NULL) return 1;
    participant participants[2] = {{&m, 0}, {&m, 1}};
    pthread_t thread[2];
    for (int i = 0; i < 2; ++i) pthread_create(&thread[i], NULL, generate_meeting, &participants[i]);
    for (int i = 0; i < 2; ++i) pthread_join(thread[i], NULL);
    for (int i = 0; i < 2; ++i) printf("thread %d\t%d\tmet %d\n", i, (int)m.status[i], m.met[i]);
    audioldm_trt_engine_free(m.engine);
    return 0;
}

static int seed(const char *directory, const char *output) {
    audioldm_trt_engine *engine = load(directory, 1);
    if (engine == NULL) return 1;
    request r = {.engine = engine};
    audioldm_trt_generate_params_init(&r.params, sizeof r.params);
    r.params.prompt = "a bell";
    r.params.steps = 3;
    uint64_t used = 0;
    r.status = audioldm_trt_generate(engine, &r.params, &r.audio, &r.waveforms, &r.samples, &used, &r.error);
    report("unseeded", r.status, r.error);
    printf("seed\t%llu\n", (unsigned long long)used);
    int written = r.status == AUDIOLDM_TRT_OK && write_floats(output, 0, &r);
    audioldm_trt_audio_free(r.audio);
    audioldm_trt_engine_free(engine);
    return written ? 0 : 1;
}

/* audioldm_trt_generate_params as a header one minor version older declared it: without the progress callback
 * and its data. */
typedef struct older_generate_params {
    size_t struct_size;
    const char *prompt, *negative_prompt;
    double duration_s, guidance, eta;
    int32_t steps, waveforms;
    int64_t seeded;
    uint64_t seed;
} older_generate_params;

/* ... and as a newer one might: one more field. */
typedef struct newer_generate_params {
    audioldm_trt_generate_params current;
    int64_t future;
} newer_generate_params;

static void struct_generation(const char *name, audioldm_trt_engine *engine, const void *params,
                              const float *expected, size_t expected_count) {
    float *audio = NULL;
    size_t waveforms = 0, samples = 0;
    char *error = NULL;
    audioldm_trt_status status = audioldm_trt_generate(engine, params, &audio, &waveforms, &samples, NULL, &error);
    if (status == AUDIOLDM_TRT_OK && (waveforms * samples != expected_count ||
                                      memcmp(audio, expected, expected_count * sizeof(float)) != 0)) {
        printf("%s\taudio differs\n", name);
    }
    report(name, status, error);
    audioldm_trt_audio_free(audio);
}

static int structs(const char *directory) {
    audioldm_trt_engine *engine = load(directory, 1);
    if (engine == NULL) return 1;
    request current = {.engine = engine};
    audioldm_trt_generate_params_init(&current.params, sizeof current.params);
    current.params.prompt = "a dog barking";
    current.params.steps = 3;
    current.params.seeded = 1;
    current.params.seed = 7;
    generate(&current);
    report("current", current.status, current.error);
    size_t count = current.waveforms * current.samples;

    /* init must not write past the struct_size it is given: the canary after the older struct stays. */
    struct {
        older_generate_params params;
        unsigned char canary[sizeof(audioldm_trt_generate_params)];
    } older;
    memset(older.canary, 0xAB, sizeof older.canary);
    audioldm_trt_generate_params_init((audioldm_trt_generate_params *)&older.params, sizeof older.params);
    for (size_t i = 0; i < sizeof older.canary; ++i) {
        if (older.canary[i] != 0xAB) {
            printf("older_init\twrote past struct_size\n");
            break;
        }
    }
    older.params.prompt = "a dog barking";
    older.params.steps = 3;
    older.params.seeded = 1;
    older.params.seed = 7;
    struct_generation("older", engine, &older.params, current.audio, count);

    newer_generate_params newer = {.current = current.params, .future = 0};
    newer.current.struct_size = sizeof newer;
    struct_generation("newer_unset", engine, &newer, current.audio, count);
    newer.future = 1;
    struct_generation("newer_set", engine, &newer, current.audio, count);

    audioldm_trt_audio_free(current.audio);
    audioldm_trt_engine_free(engine);
    return 0;
}

static void print_locale(const char *when) {
    const char *variable = getenv("LC_CTYPE");
    printf("%s\t%s\t%s\n", when, setlocale(LC_CTYPE, NULL), variable != NULL ? variable : "(unset)");
}

/* Under the host's environment (the test makes it hostile): a generation of a non-ASCII prompt written to a
 * non-ASCII path, and the process's locale before and after. */
static int isolation(const char *directory, const char *output) {
    print_locale("before");
    audioldm_trt_engine *engine = load(directory, 1);
    if (engine == NULL) return 1;
    request r = {.engine = engine};
    audioldm_trt_generate_params_init(&r.params, sizeof r.params);
    r.params.prompt = "caf\xc3\xa9 ambience";
    r.params.steps = 2;
    generate(&r);
    report("generate", r.status, r.error);
    char path[4096];
    snprintf(path, sizeof path, "%s/caf\xc3\xa9.wav", output);
    char *error = NULL;
    audioldm_trt_status status =
        audioldm_trt_write_audio(path, r.audio, r.samples, audioldm_trt_sampling_rate(engine), &error);
    report("write", status, error);
    print_locale("after");
    audioldm_trt_audio_free(r.audio);
    audioldm_trt_engine_free(engine);
    return 0;
}

int main(int argc, char **argv) {
    if (!AUDIOLDM_TRT_VERSION_COMPATIBLE(audioldm_trt_version_number()) ||
        strcmp(audioldm_trt_version(), AUDIOLDM_TRT_VERSION) != 0) {
        fprintf(stderr, "library %s, header %s\n", audioldm_trt_version(), AUDIOLDM_TRT_VERSION);
        return 1;
    }
    if (argc == 5 && strcmp(argv[1], "threads") == 0) return threads(argv[2], argv[3], atoi(argv[4]));
    if (argc == 4 && strcmp(argv[1], "errors") == 0) return errors(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "python") == 0) return python(argv[2], atoi(argv[3]));
    if (argc == 3 && strcmp(argv[1], "progress") == 0) return progress(argv[2]);
    if (argc == 3 && strcmp(argv[1], "cancel") == 0) return cancel(argv[2]);
    if (argc == 3 && strcmp(argv[1], "overlap") == 0) return overlap(argv[2]);
    if (argc == 4 && strcmp(argv[1], "seed") == 0) return seed(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "structs") == 0) return structs(argv[2]);
    if (argc == 4 && strcmp(argv[1], "isolation") == 0) return isolation(argv[2], argv[3]);
    fprintf(stderr, "usage: see the comment at the top of check_host.c\n");
    return 2;
}
