/* A C host that tests/test_host.py runs: the C API from plain C, from several threads, and its errors.
 *
 *   check-host threads ENGINE OUTDIR THREADS   four requests from four threads at once, then one after another;
 *                                              exits 1 unless both give the same audio; writes OUTDIR/N.f32
 *   check-host errors ENGINE EMPTY_DIR         bad calls, one line each: NAME<TAB>STATUS<TAB>MESSAGE
 *   check-host python EXECUTABLE               the interpreter started as EXECUTABLE, then a load
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers */
#include "audioldm_trt.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    audioldm_trt_generate_params_init(params);
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

static int threads(const char *directory, const char *output, int ort_threads) {
    audioldm_trt_engine *engine = NULL;
    char *error = NULL;
    if (audioldm_trt_engine_load(directory, "onnxruntime-cpu", NULL, ort_threads, &engine, &error) != AUDIOLDM_TRT_OK) {
        fprintf(stderr, "load: %s\n", error);
        return 1;
    }
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

static int errors(const char *directory, const char *empty_directory) {
    audioldm_trt_engine *engine = NULL;
    char *error = NULL;
    audioldm_trt_status status;

    status = audioldm_trt_engine_load("/nonexistent/engine", NULL, NULL, 0, &engine, &error);
    report("load_missing_directory", status, error);
    status = audioldm_trt_engine_load(empty_directory, NULL, NULL, 0, &engine, &error);
    report("load_incomplete_directory", status, error);
    status = audioldm_trt_engine_load(directory, "no-such-backend", NULL, 0, &engine, &error);
    report("load_unknown_backend", status, error);
    status = audioldm_trt_engine_load(directory, NULL, "NoSuchScheduler", 0, &engine, &error);
    report("load_unknown_scheduler", status, error);
    status = audioldm_trt_engine_load(directory, NULL, NULL, -1, &engine, &error);
    report("load_negative_threads", status, error);
    status = audioldm_trt_engine_load(NULL, NULL, NULL, 0, &engine, &error);
    report("load_null_directory", status, error);
    if (engine != NULL) printf("engine not reset\n");

    status = audioldm_trt_engine_load(directory, "onnxruntime-cpu", NULL, 1, &engine, &error);
    report("load", status, error);
    if (status != AUDIOLDM_TRT_OK) return 1;

    audioldm_trt_generate_params valid, params;
    audioldm_trt_generate_params_init(&valid);
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

    float silence[16] = {0};
    status = audioldm_trt_write_audio("out.mp3", silence, 16, 16000, &error);
    report("write_unknown_format", status, error);
    status = audioldm_trt_write_audio("/nonexistent/out.wav", silence, 16, 16000, &error);
    report("write_missing_directory", status, error);
    status = audioldm_trt_initialize("/usr/bin/another-python", &error);
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

static int python(const char *executable) {
    char *error = NULL;
    audioldm_trt_engine *engine = NULL;
    audioldm_trt_status status = audioldm_trt_initialize(executable, &error);
    report("initialize", status, error);
    status = audioldm_trt_engine_load("/nonexistent/engine", NULL, NULL, 0, &engine, &error);
    report("load", status, error);
    return 0;
}

int main(int argc, char **argv) {
    if (strcmp(audioldm_trt_version(), AUDIOLDM_TRT_VERSION) != 0) {
        fprintf(stderr, "library %s, header %s\n", audioldm_trt_version(), AUDIOLDM_TRT_VERSION);
        return 1;
    }
    if (argc == 5 && strcmp(argv[1], "threads") == 0) return threads(argv[2], argv[3], atoi(argv[4]));
    if (argc == 4 && strcmp(argv[1], "errors") == 0) return errors(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "python") == 0) return python(argv[2]);
    fprintf(stderr, "usage: check-host threads ENGINE OUTDIR THREADS | errors ENGINE EMPTY_DIR | python EXECUTABLE\n");
    return 2;
}
