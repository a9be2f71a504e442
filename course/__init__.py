"""
The course assignment: a student version of this project with sixteen functions to write, graded part by part.
`python -m course` is its command (course/__main__.py); the instructors' guide is docs/instructors.md.

    parts.py      the parts table: each part's file, function, points and tests; the instructor's files
    markers.py    the solution and hidden-test markers, and the student version of a file
    tree.py       a tree's files: those handed out, those a graded test needs, new folders written whole
    handout.py    the student version (make): the files blanked, HANDOUT.md, the manifest `check` reads
    kit.py        the grading kit (make --kit): no solutions, every test, the grading data, the grader
    make.py       make: validate the parts, write the student version and the kit
    submission.py a submission's files read safely, its functions taken alone, notes to read
    runner.py     a part's tests run here, the student's code in a worker
    grade.py      grade: every part of every submission, the reports and the gradebook written
    check.py      check: a student runs a part's visible tests as grading runs them
    gradebook.py  the gradebook: grades.csv, its history, submission times, Gradescope's results.json
    wire.py       what crosses between the grader and the process that runs a student's code (safetensors + JSON)
    worker.py     that process's side: imports the tree, answers the tests' calls with the probes' outputs
    sandbox.py    where that process runs: a fresh tree, namespaces, resource limits, another user, killed whole;
                  the grader's side (a Worker, the fork server's handle, the workers' users)
    contain.py    the containment as the processes below the grader run it: fork server, supervisor, worker set-up

Only __main__.py imports a project module (machinery/config.py, the command line); the worker imports the tree
it grades, inside the sandbox.
"""
