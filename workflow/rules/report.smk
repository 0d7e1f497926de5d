# Tables and rliable figures from every finished run of the grid (dtrl report). Declared outputs
# are the main table; the other tables and the figures are written beside it on every run.


rule report:
    input:
        report_inputs,
    output:
        csv=REPORT_MAIN,
        md=REPORT_MAIN_MD,
    log:
        f"{R}/logs/report.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
    threads: RES.report.threads
    resources:
        mem_mb=RES.report.mem_mb,
        runtime=RES.report.runtime,
        cpus_per_task=cpus,
    localrule: True
    conda:
        "../envs/dtrl.yaml"
    shell:
        "python -m dtrl.cli report {params.cfg} >> {log} 2>&1"
