#!/bin/sh
# An example binary: prints what ksched tells every attempt about itself.
echo "hello from $KSCHED_TASK_ID"
echo "attempt $KSCHED_ATTEMPT, fencing token $KSCHED_FENCING_TOKEN, scheduled for $KSCHED_SCHEDULED_FOR"
echo "args: $*"
