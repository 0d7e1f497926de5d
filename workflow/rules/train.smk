# Offline pretraining per (task, seed), action head and backbone, shared by every DT method of that task and
# seed that finetunes that model (pretrain/: the stochastic DT; pretrain_det/: ODT+TD3's deterministic
# one; pretrain_<backbone>/: another backbone, e.g. Reinformer; each made only when the grid runs a method
# that needs it); online finetuning per (method, task, seed). The declared output of each is its
# summary.json, written whether it completed or diverged (exit 3, accepted: a diverged pretraining's
# finetuning runs record that and the report lists them as not scored); checkpoint.pt, model.pt and
# progress.csv live in the same directory undeclared, so Snakemake never deletes them and a rerun of a
# killed job resumes from the last checkpoint.


rule pretrain:
    input:
        data=data_done("{task}"),
    output:
        f"{R}/{{pdir}}/{{task}}/seed{{seed}}/summary.json",
    wildcard_constraints:
        pdir="|".join(KIND_OF_DIR),
    log:
        f"{R}/logs/{{pdir}}/{{task}}/seed{{seed}}.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
        head=lambda wildcards: KIND_OF_DIR[wildcards.pdir][0],
        backbone=lambda wildcards: KIND_OF_DIR[wildcards.pdir][1],
    threads: THREADS["pretrain"]
    resources:
        gpu=GPU,
        mem_mb=RES.pretrain.mem_mb,
        runtime=RES.pretrain.runtime,
        cpus_per_task=cpus,
        gpu_milli=gpu_milli(GPU),
    conda:
        "../envs/dtrl.yaml"
    shell:
        logged("python -m dtrl.cli pretrain --task {wildcards.task} --seed {wildcards.seed} {params.cfg}"
               " --set threads={threads} --set model.action_head={params.head} --backbone {params.backbone}", ok_codes=(0, EXIT_DIVERGED))


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        run_done("{method}", "{task}", "{seed}"),
    log:
        f"{R}/logs/finetune/{{method}}/{{task}}/seed{{seed}}.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
    threads: THREADS["finetune"]
    resources:
        gpu=GPU,
        mem_mb=RES.finetune.mem_mb,
        runtime=RES.finetune.runtime,
        cpus_per_task=cpus,
        gpu_milli=gpu_milli(GPU),
    conda:
        "../envs/dtrl.yaml"
    shell:
        logged("python -m dtrl.cli finetune --method {wildcards.method} --task {wildcards.task} --seed {wildcards.seed}"
               " {params.cfg} --set threads={threads}", ok_codes=(0, EXIT_DIVERGED))
