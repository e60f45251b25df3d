/*
 * The floor of any BEFORE ROW trigger that numbers a run's events densely
 * (bench/bench.py, section "copy"): per row, read run_id, find the run's
 * counter in backend memory, add one and put it in seq. Nothing else: no
 * validation, no run row, no lock, no id. What the extension does per row
 * of a COPY is this and more, so a COPY through this trigger, plus the run
 * rows written in bulk, is a lower bound for any trigger-based design that
 * keeps a dense seq and a row per run.
 *
 * Built by bench.py with the server's pg_config, loaded by path into the
 * benchmark database only. Not part of the extension.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"

PG_MODULE_MAGIC;

#define RUN_KEY_LEN 64

typedef struct Counter
{
	char		run_id[RUN_KEY_LEN];	/* hash key: zero-padded run_id */
	int64		last_seq;
} Counter;

/* This transaction's counters, in TopTransactionContext: freed with it. */
static HTAB *counters = NULL;

static void
forget_counters(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		counters = NULL;
}

void		_PG_init(void);

void
_PG_init(void)
{
	RegisterXactCallback(forget_counters, NULL);
}

static int
attnum_of(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);

		if (!a->attisdropped && strcmp(NameStr(a->attname), name) == 0)
			return i + 1;
	}
	elog(ERROR, "floor_number: no column %s", name);
	return 0;
}

PG_FUNCTION_INFO_V1(floor_number);

Datum
floor_number(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	tuple;
	int			run_att;
	int			seq_att;
	Datum		run_id;
	bool		isnull;
	text	   *run_text;
	int			len;
	Counter    *counter;
	char		key[RUN_KEY_LEN];
	bool		found;
	Datum		seq;
	bool		seq_null = false;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "floor_number: a BEFORE INSERT FOR EACH ROW trigger");
	desc = RelationGetDescr(td->tg_relation);
	tuple = td->tg_trigtuple;
	run_att = attnum_of(desc, "run_id");
	seq_att = attnum_of(desc, "seq");

	run_id = heap_getattr(tuple, run_att, desc, &isnull);
	if (isnull)
		elog(ERROR, "floor_number: run_id is null");
	run_text = DatumGetTextPP(run_id);
	len = VARSIZE_ANY_EXHDR(run_text);
	if (len >= RUN_KEY_LEN)
		elog(ERROR, "floor_number: run_id longer than %d bytes", RUN_KEY_LEN - 1);
	memset(key, 0, sizeof(key));
	memcpy(key, VARDATA_ANY(run_text), len);

	if (counters == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = RUN_KEY_LEN;
		ctl.entrysize = sizeof(Counter);
		ctl.hcxt = TopTransactionContext;
		counters = hash_create("floor_number counters", 1024, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	counter = (Counter *) hash_search(counters, key, HASH_ENTER, &found);
	counter->last_seq = found ? counter->last_seq + 1 : 1;

	seq = Int64GetDatum(counter->last_seq);
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, desc, 1, &seq_att, &seq, &seq_null));
}
