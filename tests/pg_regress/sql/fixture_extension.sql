-- Fixture for every later file of this suite (schedule): the extension, and
-- try(), the one helper that runs a statement and returns what it was told
-- instead of failing:
--   try(stmt)                 'ok', or 'SQLSTATE: message'
--   try(stmt, 'constraint')   'ok', or 'SQLSTATE schema.table.constraint: message'
--                             (the constraint the error names, '-' if none)
--   try(stmt, 'anomaly')      'ok', or 'SQLSTATE' and the anomaly its DETAIL
--                             names, if any
--   undo => true              a success is rolled back too, so the next
--                             attempt starts from the same state
CREATE EXTENSION workflow_ext;
CREATE FUNCTION try(stmt text, shows text DEFAULT 'message', undo boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE detail text; con text; tab text; sch text;
BEGIN
  EXECUTE stmt;
  IF undo THEN
    RAISE EXCEPTION USING ERRCODE = 'P0099';
  END IF;
  RETURN 'ok';
EXCEPTION
  WHEN SQLSTATE 'P0099' THEN RETURN 'ok';  -- undo: the success, rolled back
  WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, con = CONSTRAINT_NAME,
                            tab = TABLE_NAME, sch = SCHEMA_NAME;
    RETURN SQLSTATE || CASE shows
      WHEN 'message' THEN ': ' || SQLERRM
      WHEN 'constraint' THEN ' ' || CASE WHEN con <> '' THEN concat_ws('.', nullif(sch, ''), nullif(tab, ''), con)
                                        ELSE '-' END || ': ' || SQLERRM
      WHEN 'anomaly' THEN coalesce(' ' || substring(detail FROM 'anomaly: (\w+)'), '')
    END;
END $$;
