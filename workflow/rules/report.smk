# Tables and rliable figures from every finished run of the grid (dtrl report). Declared outputs are
# the main table and the two directories Snakemake's HTML report is made from: the tables as HTML
# pages and the figures, marked with report() so that
#
#   snakemake --configfile config/quick.yaml --report results/quick/report.html
#
# writes one self-contained HTML file (tables, figures, captions, the DAG and each job's runtime)
# that a researcher can send around. The CSV, markdown and PDF versions are written beside them.


rule report:
    input:
        report_inputs,
    output:
        csv=REPORT_MAIN,
        md=REPORT_MAIN_MD,
        tables=report(directory(f"{R}/tables/html"), patterns=["{name}.html"], caption="../report/tables.rst",
                      category="Tables", labels={"table": "{name}"}),
        figures=report(directory(f"{R}/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
                       category=figure_category, labels={"figure": "{name}"}),
    log:
        f"{R}/logs/report.log",
    params:
        cfg=DTRL_CONFIG_ARGS,
    threads: THREADS["report"]
    resources:
        mem_mb=RES.report.mem_mb,
        runtime=RES.report.runtime,
        cpus_per_task=cpus,
    localrule: True
    conda:
        "../envs/dtrl.yaml"
    shell:
        "python -m dtrl.cli report {params.cfg} >> {log} 2>&1"


# Warnings that matter (a SAC behaviour run that never reached the 'medium' return, so 'medium' is
# its best checkpoint) are written to the jobs' logs; repeat them where the user is looking.
onsuccess:
    from dtrl.report.runs import data_warnings

    for w in data_warnings(EXP):
        print(f"dtrl: warning: {w}  (also in {R}/tables/main.md)", file=sys.stderr)
