-- Currencies come from this table, not from the runtime's ICU data: `Intl.supportedValuesOf('currency')` changes
-- with the Node version, and a code it drops would strand every balance held in it. From this migration on, the
-- API accepts exactly the active codes here (plugins/currencies.ts loads them at boot and re-reads them
-- periodically); adding, enabling or retiring a currency is a row change, never a runtime upgrade.
--
-- The rows were generated once and are static. Codes: the 162 `Intl.supportedValuesOf('currency')` returned on
-- Node 24.21.0 (ICU 78.3, CLDR 48), which is exactly the set the API accepted before, all active. Minor units: the
-- ISO 4217 list one published by the maintenance agency on 2024-06-25 (CcyMnrUnts); ICU's own figure
-- (`Intl.NumberFormat(..., { style: 'currency' }).resolvedOptions().maximumFractionDigits`, CLDR's display digits)
-- differs for 16 codes, noted on their rows, and is used only for the 6 codes ISO gives no number for. The ten
-- ISO codes with a minor unit that ICU did not list (fund codes and VED) are present but inactive, so nothing the
-- API accepts changes. minor_unit is reference data: amounts are integer minor units whatever it says.
create table currencies (
  code char(3) primary key check (code ~ '^[A-Z]{3}$'),
  minor_unit smallint not null check (minor_unit between 0 and 4),
  active boolean not null default true
);

insert into currencies (code, minor_unit, active) values
  ('AED', 2, true),
  ('AFN', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('ALL', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('AMD', 2, true),
  ('ANG', 2, true),
  ('AOA', 2, true),
  ('ARS', 2, true),
  ('AUD', 2, true),
  ('AWG', 2, true),
  ('AZN', 2, true),
  ('BAM', 2, true),
  ('BBD', 2, true),
  ('BDT', 2, true),
  ('BGN', 2, true),
  ('BHD', 3, true),
  ('BIF', 0, true),
  ('BMD', 2, true),
  ('BND', 2, true),
  ('BOB', 2, true),
  ('BRL', 2, true),
  ('BSD', 2, true),
  ('BTN', 2, true),
  ('BWP', 2, true),
  ('BYN', 2, true),
  ('BZD', 2, true),
  ('CAD', 2, true),
  ('CDF', 2, true),
  ('CHF', 2, true),
  ('CLP', 0, true),
  ('CNY', 2, true),
  ('COP', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('CRC', 2, true),
  ('CUC', 2, true),
  ('CUP', 2, true),
  ('CVE', 2, true),
  ('CZK', 2, true),
  ('DJF', 0, true),
  ('DKK', 2, true),
  ('DOP', 2, true),
  ('DZD', 2, true),
  ('EGP', 2, true),
  ('ERN', 2, true),
  ('ETB', 2, true),
  ('EUR', 2, true),
  ('FJD', 2, true),
  ('FKP', 2, true),
  ('GBP', 2, true),
  ('GEL', 2, true),
  ('GHS', 2, true),
  ('GIP', 2, true),
  ('GMD', 2, true),
  ('GNF', 0, true),
  ('GTQ', 2, true),
  ('GYD', 2, true),
  ('HKD', 2, true),
  ('HNL', 2, true),
  ('HRK', 2, true), -- not in ISO list one: ICU/CLDR's digits
  ('HTG', 2, true),
  ('HUF', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('IDR', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('ILS', 2, true),
  ('INR', 2, true),
  ('IQD', 3, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('IRR', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('ISK', 0, true),
  ('JMD', 2, true),
  ('JOD', 3, true),
  ('JPY', 0, true),
  ('KES', 2, true),
  ('KGS', 2, true),
  ('KHR', 2, true),
  ('KMF', 0, true),
  ('KPW', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('KRW', 0, true),
  ('KWD', 3, true),
  ('KYD', 2, true),
  ('KZT', 2, true),
  ('LAK', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('LBP', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('LKR', 2, true),
  ('LRD', 2, true),
  ('LSL', 2, true),
  ('LYD', 3, true),
  ('MAD', 2, true),
  ('MDL', 2, true),
  ('MGA', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('MKD', 2, true),
  ('MMK', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('MNT', 2, true),
  ('MOP', 2, true),
  ('MRU', 2, true),
  ('MUR', 2, true),
  ('MVR', 2, true),
  ('MWK', 2, true),
  ('MXN', 2, true),
  ('MYR', 2, true),
  ('MZN', 2, true),
  ('NAD', 2, true),
  ('NGN', 2, true),
  ('NIO', 2, true),
  ('NOK', 2, true),
  ('NPR', 2, true),
  ('NZD', 2, true),
  ('OMR', 3, true),
  ('PAB', 2, true),
  ('PEN', 2, true),
  ('PGK', 2, true),
  ('PHP', 2, true),
  ('PKR', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('PLN', 2, true),
  ('PYG', 0, true),
  ('QAR', 2, true),
  ('RON', 2, true),
  ('RSD', 2, true),
  ('RUB', 2, true),
  ('RWF', 0, true),
  ('SAR', 2, true),
  ('SBD', 2, true),
  ('SCR', 2, true),
  ('SDG', 2, true),
  ('SEK', 2, true),
  ('SGD', 2, true),
  ('SHP', 2, true),
  ('SLE', 2, true),
  ('SLL', 0, true), -- not in ISO list one: ICU/CLDR's digits
  ('SOS', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('SRD', 2, true),
  ('SSP', 2, true),
  ('STN', 2, true),
  ('SVC', 2, true),
  ('SYP', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('SZL', 2, true),
  ('THB', 2, true),
  ('TJS', 2, true),
  ('TMT', 2, true),
  ('TND', 3, true),
  ('TOP', 2, true),
  ('TRY', 2, true),
  ('TTD', 2, true),
  ('TWD', 2, true),
  ('TZS', 2, true),
  ('UAH', 2, true),
  ('UGX', 0, true),
  ('USD', 2, true),
  ('UYU', 2, true),
  ('UZS', 2, true),
  ('VES', 2, true),
  ('VND', 0, true),
  ('VUV', 0, true),
  ('WST', 2, true),
  ('XAF', 0, true),
  ('XCD', 2, true),
  ('XCG', 2, true), -- not in ISO list one: ICU/CLDR's digits
  ('XDR', 2, true), -- ISO minor unit N.A.: ICU/CLDR's digits
  ('XOF', 0, true),
  ('XPF', 0, true),
  ('XSU', 2, true), -- ISO minor unit N.A.: ICU/CLDR's digits
  ('YER', 2, true), -- ISO 4217 (ICU/CLDR shows 0 digits)
  ('ZAR', 2, true),
  ('ZMW', 2, true),
  ('ZWG', 2, true),
  ('ZWL', 2, true), -- not in ISO list one: ICU/CLDR's digits
  ('BOV', 2, false), -- ISO 4217, not accepted before 008: inactive
  ('CHE', 2, false), -- ISO 4217, not accepted before 008: inactive
  ('CHW', 2, false), -- ISO 4217, not accepted before 008: inactive
  ('CLF', 4, false), -- ISO 4217, not accepted before 008: inactive
  ('COU', 2, false), -- ISO 4217, not accepted before 008: inactive
  ('MXV', 2, false), -- ISO 4217, not accepted before 008: inactive
  ('USN', 2, false), -- ISO 4217, not accepted before 008: inactive
  ('UYI', 0, false), -- ISO 4217, not accepted before 008: inactive
  ('UYW', 4, false), -- ISO 4217, not accepted before 008: inactive
  ('VED', 2, false); -- ISO 4217, not accepted before 008: inactive

-- Every code already in the ledger must be a row above before the foreign keys can hold. A code an older runtime
-- accepted and this list lacks stops the migration with its name, rather than inventing a minor unit for it: add
-- the row (active or not) and migrate again.
do $$
declare
  missing text;
begin
  select string_agg(distinct currency, ', ' order by currency) into missing
    from (select currency from transactions union select currency from balances) ledger
   where not exists (select 1 from currencies c where c.code = ledger.currency);
  if missing is not null then
    raise exception 'the ledger holds currencies that 008_currencies.sql does not list: %', missing
      using hint = 'insert them into currencies (code, minor_unit, active) first';
  end if;
end
$$;

-- A plain foreign key: the migration runs in one transaction, so NOT VALID + VALIDATE would hold the same locks
-- for the same scan. A currency row referenced by the ledger cannot be deleted; retire it with active = false.
-- On balances only: post_transaction() creates-or-locks the balance rows of every transaction in its currency
-- before writing it, so no transaction exists in a currency without balance rows that the key checks. A key on
-- transactions as well would take a share lock on the same few currency rows in every money write, and that
-- contention (multixacts on a hot parent row) grows with concurrency.
alter table balances add constraint balances_currency_fkey foreign key (currency) references currencies (code);
